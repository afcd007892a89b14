// Every refusal of the storage API is JSON { error, message, hint, details? } (protocol.ts):
// repository errors by code, schema validation with the route's hint, framework and HTTP parser
// errors, a full volume.
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { MAX_CHUNK_SIZE, RepositoryError } from '../repository';
import type { ApiErrorBody } from './protocol';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** What a valid request of this route looks like, for refusals of its body or query. */
    hint?: string;
  }
}

const STATUS: Record<string, number> = {
  INVALID_ARGUMENT: 400, NOT_FOUND: 404, CONFLICT: 409, SHADOW_STORAGE_FULL: 507, CORRUPT: 500, LOCKED: 423,
};

const DEFAULT_HINT: Record<string, string> = {
  INVALID_ARGUMENT: 'fix the request: see the storage API README for this call',
  NOT_FOUND: 'list what exists (points, sessions, tokens) for valid ids',
  CONFLICT: 'the current state does not allow this call; see the message',
  CORRUPT: 'run verify; restore from another recovery point',
};

/** Refusals after which the rest of the request is not worth reading: the connection ends with the answer. */
const CLOSES = new Set([401, 408, 413, 429]);

export function fail(reply: FastifyReply, status: number, body: ApiErrorBody): FastifyReply {
  if (CLOSES.has(status)) reply.header('connection', 'close');
  return reply.code(status).type('application/json').send(body);
}

export function errorHandler(err: FastifyError | RepositoryError | (Error & { code?: string; statusCode?: number }), req: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (err instanceof RepositoryError) {
    return fail(reply, STATUS[err.code] ?? 500, { error: err.code, message: err.message, hint: err.hint ?? DEFAULT_HINT[err.code] ?? 'see the storage API README for this call', details: err.details });
  }
  if ('validation' in err && err.validation) {
    return fail(reply, 400, { error: 'INVALID_ARGUMENT', message: err.message, hint: req.routeOptions.config?.hint ?? DEFAULT_HINT.INVALID_ARGUMENT });
  }
  if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return fail(reply, 413, { error: 'BODY_TOO_LARGE', message: `request body larger than this endpoint accepts (${req.routeOptions.bodyLimit ?? '?'} bytes)`, hint: `a chunk is at most ${MAX_CHUNK_SIZE} bytes; send index patches in smaller batches` });
  }
  if (err.code === 'BODY_TOO_SLOW') {
    return fail(reply, 408, { error: 'BODY_TOO_SLOW', message: err.message, hint: 'send the body without long pauses; a slow link needs smaller batches' });
  }
  if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' || err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (err.statusCode && err.statusCode < 500)) {
    return fail(reply, err.statusCode ?? 400, { error: 'BAD_REQUEST', message: err.message, hint: 'JSON bodies as application/json, chunk and index bodies as application/octet-stream' });
  }
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT') {
    req.log?.error({ err }, 'repository volume full');
    return fail(reply, 507, {
      error: 'REPOSITORY_FULL',
      message: `the repository volume is full (${err.code})`,
      hint: 'free space or grow the repository volume, lower shadow storage limits (hvprotect shadowstorage resize) or delete old points (hvprotect shadows delete --oldest), then run hvprotect gc',
    });
  }
  req.log?.error({ err }, 'storage API request failed');
  return fail(reply, 500, { error: 'INTERNAL', message: err.message, hint: 'see the protection server log; retry' });
}

/** Errors fastify raises before a route runs (a malformed URL, an overlong parameter). */
export function frameworkError(err: Error & { statusCode?: number; code?: string }, _req: FastifyRequest, reply: FastifyReply): void {
  const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 400;
  void fail(reply, status, { error: 'BAD_REQUEST', message: err.message.slice(0, 300), hint: 'ids in the URL are short, percent-encoded UTF-8 (see the storage API README)' });
}

/** Requests node's HTTP parser refuses (headers too large, malformed): the same JSON error body. */
export function clientErrorHandler(err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
  const body = JSON.stringify({ error: 'BAD_REQUEST', message: `malformed HTTP request (${err.code ?? err.message})`, hint: 'send one well-formed HTTP/1.1 request with headers under 16 KiB' });
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy();
}
