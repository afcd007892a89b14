// Binary bodies (chunks, batches, slot patches, indexes) are read straight into one buffer of the
// announced length, taken from a pool that the chunk encoder hands back to (no concatenation, no
// fresh memory per upload); the route's bodyLimit and the content-length are enforced as
// fastify's own parser does. A chunked body is collected and joined once. A body waits unread
// while the pool's budget is spent (buffer-pool.ts `lend`).
import { errorCodes, type FastifyRequest } from 'fastify';
import { bodyPool } from '../repository/buffer-pool';
import { bodyBytesReceived } from './young-gc';

export function readBinaryBody(req: FastifyRequest, payload: NodeJS.ReadableStream, done: (err: Error | null, body?: Buffer) => void): void {
  const limit = req.routeOptions.bodyLimit ?? 1024 * 1024;
  const header = req.headers['content-length'];
  const announced = header === undefined ? NaN : Number(header);
  if (announced > limit) return done(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
  let body: Buffer | undefined;
  const parts: Buffer[] = [];
  let received = 0;
  let finished = false;
  let withdraw = () => undefined as void;
  const finish = (err: Error | null, value?: Buffer) => {
    if (finished) return;
    finished = true;
    withdraw();
    payload.removeListener('data', onData);
    payload.removeListener('end', onEnd);
    payload.removeListener('error', onError);
    payload.removeListener('close', onClose);
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
  const onClose = () => finish(Object.assign(new Error('the client closed the request before its body was read'), { statusCode: 400 }));
  // An error or a close (the client went away) while the body waits for memory ends the wait.
  payload.on('error', onError);
  payload.on('close', onClose);
  const read = () => {
    payload.on('data', onData);
    payload.on('end', onEnd);
    payload.resume();
  };
  if (!(Number.isSafeInteger(announced) && announced >= 0)) return read();
  // The body is read once the pool lends it memory: while the pool's budget is spent, it stays in
  // the socket, and TCP holds the sender back (buffer-pool.ts).
  withdraw = bodyPool.lend(announced, (b) => {
    if (finished) return bodyPool.give(b.buffer);
    body = b;
    read();
  });
}
