// Binary bodies (chunks, batches, slot patches, indexes) are read straight into one buffer of the
// announced length, taken from a pool that the chunk encoder hands back to (no concatenation, no
// fresh memory per upload); the route's bodyLimit and the content-length are enforced as
// fastify's own parser does. A chunked body is collected and joined once.
import { errorCodes, type FastifyRequest } from 'fastify';
import { bodyPool } from '../repository/buffer-pool';
import { bodyBytesReceived } from './young-gc';

export function readBinaryBody(req: FastifyRequest, payload: NodeJS.ReadableStream, done: (err: Error | null, body?: Buffer) => void): void {
  const limit = req.routeOptions.bodyLimit ?? 1024 * 1024;
  const header = req.headers['content-length'];
  const announced = header === undefined ? NaN : Number(header);
  if (announced > limit) return done(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
  const body = Number.isSafeInteger(announced) && announced >= 0 ? bodyPool.take(announced) : undefined;
  const parts: Buffer[] = [];
  let received = 0;
  let finished = false;
  const finish = (err: Error | null, value?: Buffer) => {
    if (finished) return;
    finished = true;
    payload.removeListener('data', onData);
    payload.removeListener('end', onEnd);
    payload.removeListener('error', onError);
    if (err) {
      if (body) bodyPool.give(body.buffer);
      return done(err);
    }
    done(null, value);
  };
  const onData = (chunk: Buffer | string) => {
    const c = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (received + c.length > limit) return finish(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
    if (body) {
      if (received + c.length > body.length) return finish(new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH());
      c.copy(body, received);
    } else parts.push(c);
    received += c.length;
    bodyBytesReceived(c.length);
  };
  const onEnd = () => {
    if (body && received !== body.length) return finish(new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH());
    finish(null, body ?? Buffer.concat(parts, received));
  };
  const onError = (err: Error & { statusCode?: number }) => {
    if (!(typeof err.statusCode === 'number' && err.statusCode >= 400)) err.statusCode = 400;
    finish(err);
  };
  payload.on('data', onData);
  payload.on('end', onEnd);
  payload.on('error', onError);
  payload.resume();
}
