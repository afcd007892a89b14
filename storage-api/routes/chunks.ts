// Chunks: which are missing, upload one or a batch (every digest recomputed before anything is
// stored), read one back, read many as stored (the reader decodes and checks them).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { MAX_CHUNK_SIZE, RepositoryError, checkDigest } from '../../repository';
import { bodyPool } from '../../repository/buffer-pool';
import type { Repository } from '../../repository';
import { fail } from '../errors';
import type { PointDigests } from '../point-digests';
import { API_PREFIX as P, MAX_CHUNK_BATCH_BODY, MAX_CHUNK_READ_BATCH, MAX_CHUNK_READ_BYTES, MAX_MISSING_QUERY, decodeChunkBatch } from '../protocol';

const BATCH_HINT = 'send records of 32-byte digest + u32 LE length + chunk bytes';

export function chunkRoutes(app: FastifyInstance, repo: Repository, pointDigests: PointDigests): void {
  // An agent's batched read names its chunks in the body, after auth.ts has run: each is checked
  // here against the point its restore grant is for, as auth.ts checks GET /chunks/:digest's.
  const checkGrantedDigests = async (req: FastifyRequest, reply: FastifyReply, digests: string[]): Promise<void> => {
    const g = req.grant;
    if (!g) return; // an admin token (auth.ts let nothing else through without a grant)
    if (g.kind !== 'restore') {
      fail(reply, 403, { error: 'FORBIDDEN', message: `${req.identity?.name}: a backup grant (job ${g.job}) reads no chunks`, hint: 'an agent reads chunks only for a restore job' });
      return;
    }
    for (const d of new Set(digests)) {
      if (!(await pointDigests.has(g.ds, g.pid, d))) {
        fail(reply, 403, { error: 'FORBIDDEN', message: `${req.identity?.name}: chunk ${d} is not part of ${g.ds}/${g.pid}, the point job ${g.job} may read`, hint: 'an agent reaches the storage API only for the job a protection server granted it' });
        return;
      }
    }
  };
  app.post<{ Body: { digests: string[] } }>(`${P}/chunks/missing`, {
    bodyLimit: MAX_MISSING_QUERY * 67 + 1024,
    config: { access: 'backup', hint: `send { "digests": [ up to ${MAX_MISSING_QUERY} SHA-256 digests as 64 lowercase hex digits ] }` },
    schema: {
      body: {
        type: 'object',
        required: ['digests'],
        additionalProperties: false,
        properties: { digests: { type: 'array', maxItems: MAX_MISSING_QUERY, items: { type: 'string', pattern: '^[0-9a-f]{64}$' } } },
      },
    },
  }, async (req) => {
    return { missing: await repo.chunks.missing(req.body.digests) };
  });

  app.put<{ Params: { digest: string } }>(`${P}/chunks/:digest`, { bodyLimit: MAX_CHUNK_SIZE, config: { access: 'backup' } }, async (req, reply) => {
    const digest = checkDigest(req.params.digest);
    const body = req.body;
    if (!Buffer.isBuffer(body)) throw new RepositoryError('INVALID_ARGUMENT', 'chunk body must be application/octet-stream', 'send the raw chunk bytes');
    const [r] = await repo.chunks.insertBatch(body, [{ digest, offset: 0, length: body.length }]);
    return reply.code(r.written ? 201 : 200).send({ digest, ...r });
  });

  app.post(`${P}/chunks/batch`, { bodyLimit: MAX_CHUNK_BATCH_BODY, config: { access: 'backup' } }, async (req, reply) => {
    const body = req.body;
    if (!Buffer.isBuffer(body)) throw new RepositoryError('INVALID_ARGUMENT', 'chunk batch body must be application/octet-stream', BATCH_HINT);
    let chunks: Array<{ digest: string; data: Buffer }>;
    try {
      chunks = decodeChunkBatch(body);
    } catch (err) {
      throw new RepositoryError('INVALID_ARGUMENT', `chunk batch: ${err instanceof Error ? err.message : String(err)}`, BATCH_HINT);
    }
    // Every digest is checked before anything is stored: a bad batch stores nothing.
    const items = chunks.map((c) => ({ digest: c.digest, offset: c.data.byteOffset - body.byteOffset, length: c.data.length }));
    const stored = await repo.chunks.insertBatch(body, items);
    return reply.code(201).send({ results: stored.map((r, i) => ({ digest: items[i].digest, ...r })) });
  });

  // Whole-disk restore's read: many chunks per request, as stored (protocol.ts). Read access as
  // GET /chunks/:digest: whoever may read one chunk may read these.
  app.post<{ Body: { digests: string[] } }>(`${P}/chunks/read`, {
    bodyLimit: MAX_CHUNK_READ_BATCH * 67 + 1024,
    // 'read' checks the restore grant and its lease; the digests, in the body, are checked below
    // against the granted point (as 'read-chunk' checks GET /chunks/:digest's).
    config: { access: 'read' },
    schema: {
      body: {
        type: 'object',
        required: ['digests'],
        additionalProperties: false,
        properties: { digests: { type: 'array', minItems: 1, maxItems: MAX_CHUNK_READ_BATCH, items: { type: 'string', pattern: '^[0-9a-f]{64}$' } } },
      },
    },
  }, async (req, reply) => {
    await checkGrantedDigests(req, reply, req.body.digests);
    if (reply.sent) return reply;
    // The response's memory comes from the pool request bodies use and goes back once the
    // response is closed (sent or cut off: nothing is written from it after that). A fresh 4 MiB
    // per batch made a whole-disk restore the server's main cost: page faults, and the major GCs
    // V8 runs as external memory grows (bench/restore.md).
    let pooled: Buffer | undefined;
    const body = await repo.chunks.readStoredRecords(req.body.digests, MAX_CHUNK_READ_BYTES, (n) => (pooled = bodyPool.take(n)));
    reply.raw.once('close', () => bodyPool.give(pooled!.buffer));
    return reply.type('application/octet-stream').send(body);
  });

  app.get<{ Params: { digest: string } }>(`${P}/chunks/:digest`, { config: { access: 'read-chunk' } }, async (req, reply) => {
    const raw = await repo.chunks.read(checkDigest(req.params.digest));
    return reply.type('application/octet-stream').send(raw);
  });
}
