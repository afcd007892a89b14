// The storage API: host agents push chunks and indexes and commit recovery points; restores
// read them back; admins manage tokens, shadow storage, GC and verify. Every call needs a bearer
// token (TokenStore); ids from URLs go through the repository's id checks before any path use.
import Fastify, { LogController, errorCodes, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import {
  MAX_CHUNK_SIZE, Repository, RepositoryError, checkDataSourceId, checkDigest, checkDiskId, checkPointId,
  collectGarbage, openDiskStream, verifyRepository,
} from '../repository';
import type { CommitPointInput } from '../repository';
import { API_PREFIX, MAX_CHUNK_BATCH_BODY, MAX_FULL_INDEX_BODY, MAX_MISSING_QUERY, MAX_PATCH_BODY, decodeChunkBatch, decodeSlotPatch } from './protocol';
import type { ApiErrorBody } from './protocol';
import type { TokenIdentity, TokenRole, TokenStore } from './tokens';
import { promises as fs } from 'node:fs';
import { bodyPool } from '../repository/buffer-pool';
import { STATUS_CODES } from 'node:http';
import type { StorageServerTls } from './tls';

export interface StorageApiOptions {
  repository: Repository;
  tokens: TokenStore;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  logger?: Logger;
  /** Serve HTTPS (and require client certificates when clientCa is set). */
  tls?: StorageServerTls;
}

export interface StorageApi {
  url: string;
  close(): Promise<void>;
  /** The fastify instance (tests inject requests). */
  app: FastifyInstance;
}

declare module 'fastify' {
  interface FastifyRequest {
    identity?: TokenIdentity;
  }
  interface FastifyContextConfig {
    role?: TokenRole;
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

/** Errors fastify raises before a route runs (a malformed URL, an overlong parameter). */
function frameworkError(err: Error & { statusCode?: number; code?: string }, _req: FastifyRequest, reply: FastifyReply): void {
  const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 400;
  void fail(reply, status, { error: 'BAD_REQUEST', message: err.message.slice(0, 300), hint: 'ids in the URL are short, percent-encoded UTF-8 (see the storage API README)' });
}

/** Requests node's HTTP parser refuses (headers too large, malformed): the same JSON error body. */
function clientErrorHandler(err: Error & { code?: string }, socket: import('node:net').Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
  const body = JSON.stringify({ error: 'BAD_REQUEST', message: `malformed HTTP request (${err.code ?? err.message})`, hint: 'send one well-formed HTTP/1.1 request with headers under 16 KiB' });
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy();
}

function fail(reply: FastifyReply, status: number, body: ApiErrorBody): FastifyReply {
  return reply.code(status).type('application/json').send(body);
}

/** A shadow storage size from a JSON body: only the text forms (never a parsed object). */
function maxSizeText(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v.length > 64) throw new RepositoryError('INVALID_ARGUMENT', `maxSize ${JSON.stringify(v)?.slice(0, 80)}`, 'a size as text: "20GB", "15%", "1073741824" or "UNBOUNDED"');
  return v;
}

function intParam(v: unknown, name: string): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n)) throw new RepositoryError('INVALID_ARGUMENT', `query parameter ${name}=${String(v)}`, `${name} is a non-negative integer`);
  return n;
}

function parseRange(header: string | undefined, q: Record<string, string | undefined>): { offset: number; length?: number } | undefined {
  if (q.offset !== undefined || q.length !== undefined) {
    return { offset: q.offset ? intParam(q.offset, 'offset') : 0, length: q.length !== undefined ? intParam(q.length, 'length') : undefined };
  }
  if (!header) return undefined;
  const m = /^bytes=(\d+)-(\d*)$/.exec(header.trim());
  if (!m) throw new RepositoryError('INVALID_ARGUMENT', `Range header ${header}`, 'one range as "bytes=START-END" (END inclusive, optional)');
  const offset = Number(m[1]);
  return { offset, length: m[2] ? Number(m[2]) - offset + 1 : undefined };
}

function readBinaryBody(req: FastifyRequest, payload: NodeJS.ReadableStream, done: (err: Error | null, body?: Buffer) => void): void {
  const limit = req.routeOptions.bodyLimit ?? 1024 * 1024;
  const header = req.headers['content-length'];
  const announced = header === undefined ? NaN : Number(header);
  if (announced > limit) return done(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
  // A known length gets its buffer up front; a chunked body is collected and joined once.
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
      if (body) bodyPool.give(body.buffer as ArrayBuffer);
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

export function buildStorageApi(opts: StorageApiOptions): FastifyInstance {
  const { repository: repo, tokens } = opts;
  const app = Fastify({
    loggerInstance: opts.logger as FastifyBaseLogger | undefined,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    // Long uploads on keep-alive connections from many agents.
    keepAliveTimeout: 65_000,
    requestTimeout: 10 * 60_000,
    frameworkErrors: frameworkError,
    clientErrorHandler,
    ...(opts.tls
      ? {
          https: {
            cert: opts.tls.cert,
            key: opts.tls.key,
            minVersion: 'TLSv1.2' as const,
            ...(opts.tls.clientCa ? { ca: opts.tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
          },
        }
      : {}),
  }) as unknown as FastifyInstance;

  // Binary bodies are read straight into one buffer of the announced length, taken from a pool
  // that the chunk encoder hands back to (no concatenation, no fresh memory per upload); the
  // route's bodyLimit and the content-length are enforced as fastify's own parser does.
  app.addContentTypeParser('application/octet-stream', (req, payload, done) => readBinaryBody(req, payload, done));

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, req, reply) => {
    if (err instanceof RepositoryError) {
      return fail(reply, STATUS[err.code] ?? 500, { error: err.code, message: err.message, hint: err.hint ?? DEFAULT_HINT[err.code] ?? 'see the storage API README for this call', details: err.details });
    }
    if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      return fail(reply, 413, { error: 'BODY_TOO_LARGE', message: `request body larger than this endpoint accepts (${req.routeOptions.bodyLimit ?? '?'} bytes)`, hint: `a chunk is at most ${MAX_CHUNK_SIZE} bytes; send index patches in smaller batches` });
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
  });

  app.setNotFoundHandler((req, reply) => fail(reply, 404, { error: 'NO_SUCH_ENDPOINT', message: `${req.method} ${req.url.split('?')[0]} is not a storage API endpoint`, hint: `endpoints live under ${API_PREFIX}/` }));

  app.addHook('onRequest', async (req, reply) => {
    const auth = req.headers.authorization;
    if (!auth || !auth.startsWith('Bearer ')) {
      return fail(reply, 401, { error: 'UNAUTHENTICATED', message: 'no bearer token', hint: 'send "Authorization: Bearer <token>" with the token issued for this agent (hvprotect token issue)' });
    }
    const identity = tokens.authenticate(auth.slice(7).trim());
    if (!identity) {
      return fail(reply, 401, { error: 'UNAUTHENTICATED', message: 'unknown or revoked token', hint: 'ask the administrator for a new token (hvprotect token issue --agent <host>)' });
    }
    req.identity = identity;
    const needed = req.routeOptions.config?.role ?? 'agent';
    if (needed === 'admin' && identity.role !== 'admin') {
      return fail(reply, 403, { error: 'FORBIDDEN', message: `${identity.name} holds an agent token; this call needs an admin token`, hint: 'use an admin token for management calls' });
    }
  });

  const P = API_PREFIX;
  const admin = { config: { role: 'admin' as const } };
  type Q = Record<string, string | undefined>;
  type Params = Record<string, string>;

  // ---- chunks ---------------------------------------------------------------------------
  app.post(`${P}/chunks/missing`, { bodyLimit: MAX_MISSING_QUERY * 67 + 1024 }, async (req) => {
    const digests = (req.body as { digests?: unknown } | undefined)?.digests;
    if (!Array.isArray(digests) || digests.length > MAX_MISSING_QUERY) {
      throw new RepositoryError('INVALID_ARGUMENT', 'body needs "digests": an array', `send { "digests": [ up to ${MAX_MISSING_QUERY} SHA-256 hex strings ] }`);
    }
    digests.forEach(checkDigest);
    const missing: string[] = [];
    const unique = [...new Set(digests as string[])];
    let next = 0;
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (next < unique.length) {
        const d = unique[next++];
        if ((await repo.chunks.touch(d)) === undefined) missing.push(d);
      }
    }));
    return { missing };
  });

  app.put(`${P}/chunks/:digest`, { bodyLimit: MAX_CHUNK_SIZE }, async (req, reply) => {
    const digest = checkDigest((req.params as Params).digest);
    const body = req.body;
    if (!Buffer.isBuffer(body)) throw new RepositoryError('INVALID_ARGUMENT', 'chunk body must be application/octet-stream', 'send the raw chunk bytes');
    if (body.length > MAX_CHUNK_SIZE) throw new RepositoryError('INVALID_ARGUMENT', `chunk of ${body.length} bytes`, `a chunk is 1..${MAX_CHUNK_SIZE} bytes`);
    const [r] = await repo.chunks.insertBatch(body, [{ digest, offset: 0, length: body.length }]);
    return reply.code(r.written ? 201 : 200).send({ digest, ...r });
  });

  app.post(`${P}/chunks/batch`, { bodyLimit: MAX_CHUNK_BATCH_BODY }, async (req, reply) => {
    if (!Buffer.isBuffer(req.body)) throw new RepositoryError('INVALID_ARGUMENT', 'chunk batch body must be application/octet-stream', 'send records of 32-byte digest + u32 LE length + chunk bytes');
    let chunks: Array<{ digest: string; data: Buffer }>;
    try {
      chunks = decodeChunkBatch(req.body);
    } catch (err) {
      throw new RepositoryError('INVALID_ARGUMENT', `chunk batch: ${(err as Error).message}`, 'send records of 32-byte digest + u32 LE length + chunk bytes');
    }
    // Every digest is checked before anything is stored: a bad batch stores nothing.
    const items: Array<{ digest: string; offset: number; length: number }> = [];
    for (const c of chunks) items.push({ digest: c.digest, offset: c.data.byteOffset - req.body.byteOffset, length: c.data.length });
    const stored = await repo.chunks.insertBatch(req.body, items);
    const results = stored.map((r, i) => ({ digest: items[i].digest, ...r }));
    return reply.code(201).send({ results });
  });

  app.get(`${P}/chunks/:digest`, async (req, reply) => {
    const digest = checkDigest((req.params as Params).digest);
    const raw = await repo.chunks.read(digest);
    return reply.type('application/octet-stream').send(raw);
  });

  // ---- backup sessions ------------------------------------------------------------------
  app.post(`${P}/sessions`, async (req, reply) => {
    const b = (req.body ?? {}) as { dataSource?: unknown; basePoint?: unknown; chunkSize?: unknown };
    const ds = checkDataSourceId(b.dataSource);
    const basePoint = b.basePoint === undefined || b.basePoint === null ? undefined : checkPointId(b.basePoint);
    const s = await repo.beginSession(ds, { basePoint, chunkSize: b.chunkSize as number | undefined });
    return reply.code(201).send(s);
  });

  app.get(`${P}/sessions/:sid`, async (req) => repo.getSession((req.params as Params).sid));

  app.delete(`${P}/sessions/:sid`, async (req, reply) => {
    const sid = (req.params as Params).sid;
    await repo.getSession(sid);
    await repo.abortSession(sid);
    return reply.code(204).send();
  });

  app.post(`${P}/sessions/:sid/disks/:diskId/slots`, { bodyLimit: MAX_PATCH_BODY }, async (req) => {
    const { sid, diskId } = req.params as Params;
    const q = req.query as Q;
    if (!Buffer.isBuffer(req.body)) throw new RepositoryError('INVALID_ARGUMENT', 'slot patch body must be application/octet-stream');
    let patch: { slots: number[]; digests: Buffer };
    try {
      patch = decodeSlotPatch(req.body);
    } catch (err) {
      throw new RepositoryError('INVALID_ARGUMENT', (err as Error).message, 'send 40-byte records: u64 LE slot + 32-byte digest');
    }
    const base = q.base === undefined ? undefined : q.base === 'none' ? null : checkPointId(q.base);
    return repo.patchIndex(sid, checkDiskId(diskId), { virtualSize: intParam(q.virtualSize, 'virtualSize'), basePoint: base }, patch.slots, patch.digests);
  });

  app.put(`${P}/sessions/:sid/disks/:diskId/index`, { bodyLimit: MAX_FULL_INDEX_BODY }, async (req) => {
    const { sid, diskId } = req.params as Params;
    const q = req.query as Q;
    if (!Buffer.isBuffer(req.body)) throw new RepositoryError('INVALID_ARGUMENT', 'index body must be application/octet-stream');
    return repo.putFullIndex(sid, checkDiskId(diskId), intParam(q.virtualSize, 'virtualSize'), req.body);
  });

  app.post(`${P}/sessions/:sid/commit`, async (req, reply) => {
    const sid = (req.params as Params).sid;
    const m = await repo.commitPoint(sid, (req.body ?? {}) as CommitPointInput);
    return reply.code(201).send(m);
  });

  // ---- recovery points and restore --------------------------------------------------------
  app.get(`${P}/datasources/:ds/points`, async (req) => {
    const ds = checkDataSourceId((req.params as Params).ds);
    return { points: await repo.listPoints(ds) };
  });

  app.get(`${P}/datasources/:ds/points/:pid`, async (req) => {
    const { ds, pid } = req.params as Params;
    return repo.getPoint(checkDataSourceId(ds), checkPointId(pid));
  });

  app.get(`${P}/datasources/:ds/points/:pid/disks/:diskId/index`, async (req, reply) => {
    const { ds, pid, diskId } = req.params as Params;
    checkDiskId(diskId);
    const point = await repo.getPoint(checkDataSourceId(ds), checkPointId(pid));
    if (!point.disks.some((d) => d.diskId === diskId)) throw new RepositoryError('NOT_FOUND', `recovery point ${ds}/${pid} has no disk ${diskId}`, `its disks: ${point.disks.map((d) => d.diskId).join(', ')}`);
    // Streamed: the index of a 64 TiB disk is gigabytes, not to be held in memory per request.
    const fh = await fs.open(repo.indexPath(ds, pid, diskId), 'r');
    let size: number;
    try {
      size = (await fh.stat()).size;
    } catch (err) {
      await fh.close();
      throw err;
    }
    reply.header('content-length', String(size));
    return reply.type('application/octet-stream').send(fh.createReadStream());
  });

  app.get(`${P}/datasources/:ds/points/:pid/disks/:diskId/raw`, async (req, reply) => {
    const { ds, pid, diskId } = req.params as Params;
    const range = parseRange(req.headers.range, req.query as Q);
    const { info, stream } = await openDiskStream(repo, checkDataSourceId(ds), checkPointId(pid), checkDiskId(diskId), range);
    reply.header('content-length', String(info.length));
    reply.header('x-virtual-size', String(info.virtualSize));
    if (range) reply.code(206).header('content-range', `bytes ${info.offset}-${info.offset + info.length - 1}/${info.virtualSize}`);
    return reply.type('application/octet-stream').send(stream);
  });

  app.post(`${P}/datasources/:ds/points/:pid/restore-leases`, async (req, reply) => {
    const { ds, pid } = req.params as Params;
    const ttl = (req.body as { ttlSeconds?: unknown } | undefined)?.ttlSeconds;
    if (ttl !== undefined && ttl !== null && (!Number.isSafeInteger(ttl) || (ttl as number) < 1 || (ttl as number) > 7 * 86400)) {
      throw new RepositoryError('INVALID_ARGUMENT', `ttlSeconds ${String(ttl)}`, 'a whole number of seconds from 1 to 604800 (7 days)');
    }
    return reply.code(201).send(await repo.beginRestore(checkDataSourceId(ds), checkPointId(pid), typeof ttl === 'number' ? ttl * 1000 : undefined));
  });

  app.delete(`${P}/restore-leases/:id`, async (req, reply) => {
    await repo.endRestore((req.params as Params).id);
    return reply.code(204).send();
  });

  // ---- management (admin token) -----------------------------------------------------------
  app.post(`${P}/admin/tokens`, admin, async (req, reply) => {
    const b = (req.body ?? {}) as { name?: string; role?: TokenRole };
    const token = await tokens.issue(String(b.name), b.role ?? 'agent');
    return reply.code(201).send({ name: b.name, role: b.role ?? 'agent', token });
  });
  app.get(`${P}/admin/tokens`, admin, async () => ({ tokens: tokens.list() }));
  app.delete(`${P}/admin/tokens/:name`, admin, async (req, reply) => {
    await tokens.revoke((req.params as Params).name);
    return reply.code(204).send();
  });

  app.get(`${P}/admin/shadowstorage`, admin, async (req) => {
    const ds = (req.query as Q).dataSource;
    return { shadowStorage: await repo.listShadowStorage(ds === undefined ? undefined : checkDataSourceId(ds)) };
  });
  app.post(`${P}/admin/shadowstorage`, admin, async (req, reply) => {
    const b = (req.body ?? {}) as { dataSource?: unknown; maxSize?: unknown };
    return reply.code(201).send(await repo.addShadowStorage(checkDataSourceId(b.dataSource), maxSizeText(b.maxSize)));
  });
  app.patch(`${P}/admin/shadowstorage/:ds`, admin, async (req) => {
    const b = (req.body ?? {}) as { maxSize?: unknown; maxPoints?: number; retentionRangeDays?: number | null };
    return repo.resizeShadowStorage(checkDataSourceId((req.params as Params).ds), { maxSize: maxSizeText(b.maxSize), maxPoints: b.maxPoints, retentionRangeDays: b.retentionRangeDays });
  });
  app.post(`${P}/admin/datasources/:ds/delete-oldest`, admin, async (req) => repo.deleteOldestPoint(checkDataSourceId((req.params as Params).ds)));
  app.post(`${P}/admin/datasources/:ds/enforce-retention`, admin, async (req) => ({ deleted: await repo.enforceRetention(checkDataSourceId((req.params as Params).ds)) }));
  app.get(`${P}/admin/deletions`, admin, async () => ({ deletions: await repo.readDeletionLog() }));
  app.post(`${P}/admin/gc`, admin, async () => collectGarbage(repo));
  app.post(`${P}/admin/verify`, admin, async (req) => {
    const b = (req.body ?? {}) as { readData?: boolean; quarantine?: boolean; dataSource?: string };
    return verifyRepository(repo, { readData: !!b.readData, quarantine: !!b.readData && b.quarantine !== false, dataSource: b.dataSource === undefined ? undefined : checkDataSourceId(b.dataSource) });
  });

  return app as unknown as FastifyInstance;
}

/** Starts the storage API on host:port (the protection server embeds this). */
export async function startStorageApi(opts: StorageApiOptions): Promise<StorageApi> {
  const app = buildStorageApi(opts);
  const host = opts.host ?? '127.0.0.1';
  await app.listen({ host, port: opts.port ?? 0 });
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  const shownHost = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  return {
    url: `${opts.tls ? 'https' : 'http'}://${shownHost}:${port}`,
    app,
    close: () => app.close(),
  };
}
