// Every refusal of the storage API: authentication, authorization, bodies, ids, unknown things.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { MAX_CHUNK_SIZE } from '../../repository';
import { StorageApiError, StorageClient } from '../../storage-api';
import { startFixture, type Fixture } from './support';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Status and JSON body (empty when not JSON) of a response. */
function answer(res: http.IncomingMessage, resolve: (r: { status: number; json: Record<string, unknown> }) => void): void {
  const parts: Buffer[] = [];
  res.on('data', (c: Buffer) => parts.push(c));
  res.on('end', () => {
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>;
    } catch {
      // not JSON
    }
    resolve({ status: res.statusCode ?? 0, json });
  });
}

/** A request exactly as written (no client-side path normalisation). */
function raw(f: Fixture, method: string, url: string, token?: string, body?: Buffer | object, contentType?: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const headers: Record<string, string> = {};
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  let payload: Buffer | undefined;
  if (Buffer.isBuffer(body)) {
    payload = body;
    headers['content-type'] = contentType ?? 'application/octet-stream';
  } else if (body) {
    payload = Buffer.from(JSON.stringify(body));
    headers['content-type'] = 'application/json';
  }
  if (payload) headers['content-length'] = String(payload.length);
  const u = new URL(f.api.url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method, path: url, headers }, (res) => answer(res, resolve));
    req.on('error', reject);
    req.end(payload);
  });
}

const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};

/** A POST/PUT with Transfer-Encoding: chunked (no content-length), body written in parts. */
function chunked(f: Fixture, url: string, parts: Buffer[]): Promise<{ status: number; json: Record<string, unknown> }> {
  const u = new URL(f.api.url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method: url.endsWith('/batch') ? 'POST' : 'PUT', path: url, headers: { authorization: `Bearer ${f.agentToken}`, 'x-hvprotect-grant': grantOf(f), 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } }, (res) => answer(res, resolve));
    req.on('error', (err: NodeJS.ErrnoException) => (err.code === 'EPIPE' || err.code === 'ECONNRESET' ? undefined : reject(err)));
    for (const p of parts) req.write(p);
    req.end();
  });
}

/** The grant chunked() uploads under (set by the suite). */
let uploadGrant = '';
const grantOf = (_f: Fixture) => uploadGrant;

async function refused(p: Promise<unknown>): Promise<StorageApiError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(StorageApiError);
    return err as StorageApiError;
  }
  throw new Error('expected a refusal');
}

async function chunkFiles(f: Fixture): Promise<string[]> {
  const out: string[] = [];
  const root = path.join(f.dir, 'chunks');
  for (const d of await fs.readdir(root).catch(() => [] as string[])) {
    for (const n of await fs.readdir(path.join(root, d))) out.push(n);
  }
  return out;
}

describe('storage API refusals', () => {
  let f: Fixture;
  /** hv-host-01 under a backup job's grant: what an agent uploads with. */
  let up: Awaited<ReturnType<Fixture['backupJob']>>;
  beforeAll(async () => {
    f = await startFixture();
    up = await f.backupJob('vm-uploads');
    uploadGrant = up.grant;
  });
  afterAll(async () => f.close());

  it('refuses a call without a token, with a wrong token and with a revoked token (401, JSON saying what to do)', async () => {
    const none = await raw(f, 'GET', '/v1/datasources/vm/points');
    expect(none.status).toBe(401);
    expect(none.json).toMatchObject({ error: 'UNAUTHENTICATED', message: 'no bearer token' });
    expect(String(none.json.hint)).toMatch(/Authorization: Bearer/);
    const wrong = await refused(new StorageClient(f.api.url, 'hvp_not-a-real-token').whoami());
    expect(wrong.status).toBe(401);
    expect(wrong.code).toBe('UNAUTHENTICATED');
    const token = await f.admin.issueToken('hv-host-09');
    const agent = new StorageClient(f.api.url, token);
    expect(await agent.whoami()).toMatchObject({ role: 'agent' });
    await f.admin.revokeToken('hv-host-09');
    const revoked = await refused(agent.whoami());
    expect(revoked.status).toBe(401);
    expect(revoked.message).toMatch(/unknown or revoked/);
  });

  it('does not replace a live token without --rotate; a rotation keeps the old token until the new one is used (#18)', async () => {
    const old = await f.admin.issueToken('hv-host-10');
    const running = new StorageClient(f.api.url, old);
    expect(await running.whoami()).toMatchObject({ role: 'agent' });
    // The attack: issuing again silently cut off the running agent.
    const again = await refused(f.admin.issueToken('hv-host-10'));
    expect(again.status).toBe(409);
    expect(again.message).toMatch(/hv-host-10 holds a live agent token/);
    expect(again.hint).toMatch(/--rotate/);
    expect(await running.whoami()).toMatchObject({ role: 'agent' });
    const fresh = await f.admin.issueToken('hv-host-10', 'agent', { rotate: true });
    expect(await running.whoami()).toMatchObject({ role: 'agent' }); // still valid: the agent has not picked up the new one
    expect(await new StorageClient(f.api.url, fresh).whoami()).toMatchObject({ role: 'agent' });
    const ended = await refused(running.whoami());
    expect(ended.status).toBe(401);
    expect(await new StorageClient(f.api.url, fresh).whoami()).toMatchObject({ role: 'agent' });
    // The 401 names flags `token issue` has.
    const help = spawnSync(process.execPath, [path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js'), 'token', 'issue', '--help'], { encoding: 'utf8' }).stdout;
    for (const flag of String(ended.hint).match(/--[a-z-]+/g) ?? ['(none)']) expect(help).toContain(flag);
    await f.admin.revokeToken('hv-host-10');
    expect((await refused(new StorageClient(f.api.url, fresh).whoami())).status).toBe(401);
  });

  it('keeps only hashes of tokens on disk', async () => {
    const stored = await fs.readFile(path.join(f.dir, 'tokens.json'), 'utf8');
    expect(stored).not.toContain(f.agentToken);
    expect(stored).toContain(sha(Buffer.from(f.agentToken)));
  });

  it('refuses management calls with an agent token (403)', async () => {
    const e = await refused(f.agent.collectGarbage());
    expect(e.status).toBe(403);
    expect(e.code).toBe('FORBIDDEN');
    expect((await refused(f.agent.issueToken('evil', 'admin'))).status).toBe(403);
  });

  it('refuses a chunk whose bytes do not hash to its name, and stores nothing', async () => {
    const data = Buffer.from('some chunk bytes');
    const e = await refused(up.agent.putChunk(sha(Buffer.from('other bytes')), data));
    expect(e.status).toBe(400);
    expect(e.message).toMatch(/digest mismatch/);
    expect(await chunkFiles(f)).toEqual([]);
    // a batch with one bad chunk stores none of the batch
    const good = Buffer.from('good chunk');
    const be = await refused(up.agent.putChunks([{ digest: sha(good), data: good }, { digest: sha(good), data: data }]));
    expect(be.status).toBe(400);
    expect(await chunkFiles(f)).toEqual([]);
  });

  it('refuses an oversize chunk body (413) and a malformed digest (400)', async () => {
    const big = Buffer.alloc(MAX_CHUNK_SIZE + 1, 1);
    const e = await refused(up.agent.putChunk(sha(big), big));
    expect(e.status).toBe(413);
    expect(e.code).toBe('BODY_TOO_LARGE');
    const bad = await raw(f, 'PUT', '/v1/chunks/ABC', f.adminToken, Buffer.from('x'));
    expect(bad.status).toBe(400);
    expect(bad.json).toMatchObject({ error: 'INVALID_ARGUMENT' });
    expect(String(bad.json.hint)).toMatch(/64 lowercase hex/);
  });

  it('refuses bad ids and path traversal before touching the disk', async () => {
    for (const url of [
      '/v1/datasources/..%2F..%2Fetc/points',
      '/v1/datasources/..%2fconfig/points',
      '/v1/datasources/.hidden/points',
      '/v1/datasources/a%00b/points',
      '/v1/datasources/vm/points/..%2F..%2Fconfig',
      '/v1/datasources/vm/points/20261124T154130.123Z/disks/..%2F..%2F..%2Fconfig/index',
      '/v1/chunks/..%2F..%2Fconfig',
    ]) {
      const r = await raw(f, 'GET', url, f.adminToken);
      expect({ url, status: r.status, error: r.json.error }).toEqual({ url, status: 400, error: 'INVALID_ARGUMENT' });
    }
    const s = await raw(f, 'POST', '/v1/sessions', f.adminToken, { dataSource: '../../tmp/x' });
    expect(s.status).toBe(400);
    const ss = await f.admin.beginSession('vm-ids');
    const d = await raw(f, 'POST', `/v1/sessions/${ss.sessionId}/disks/..%2Fx/slots?virtualSize=65536`, f.adminToken, Buffer.alloc(0));
    expect(d.status).toBe(400);
    const sid = await raw(f, 'POST', '/v1/sessions/..%2F..%2Fdatasources/commit', f.adminToken, { kind: 'express-full', mode: 'online', disks: [] });
    expect(sid.status).toBe(400);
  });

  it('answers unknown points, disks, sessions and chunks with 404 and a hint', async () => {
    const p = await refused(f.admin.getPoint({ dataSource: 'vm', pointId: '20261124T154130.123Z' }));
    expect(p.status).toBe(404);
    expect(p.hint).toMatch(/list the points/);
    expect((await refused(f.admin.getIndex({ dataSource: 'vm', pointId: '20261124T154130.123Z' }, 'disk0'))).status).toBe(404);
    expect((await refused(f.admin.openDiskStream({ dataSource: 'vm', pointId: '20261124T154130.123Z' }, 'disk0'))).status).toBe(404);
    expect((await refused(f.admin.getChunk('0'.repeat(63) + '1'))).status).toBe(404);
    const sess = await refused(f.admin.commitPoint('0'.repeat(32), { kind: 'express-full', mode: 'online', disks: [{ diskId: 'd', fileName: 'd.vhdx', virtualSize: 1 }] }));
    expect(sess.status).toBe(404);
    expect(sess.hint).toMatch(/begin a new session/);
    expect((await refused(f.admin.beginSession('vm-x', { basePoint: '20261124T154130.123Z' }))).status).toBe(404);
    const ep = await raw(f, 'GET', '/v1/nothing-here', f.adminToken);
    expect(ep.status).toBe(404);
    expect(ep.json.error).toBe('NO_SUCH_ENDPOINT');
  });

  it('refuses an index that references chunks the repository lacks (409 listing them)', async () => {
    const { session: s, agent } = await f.backupJob('vm-missing');
    const digest = Buffer.from(sha(Buffer.from('never uploaded')), 'hex');
    const e = await refused(agent.putIndex(s.sessionId, 'disk0', { virtualSize: 65536, slots: [0], digests: digest }));
    expect(e.status).toBe(409);
    expect(e.details?.missing).toEqual([digest.toString('hex')]);
    const slot = await refused(agent.putIndex(s.sessionId, 'disk0', { virtualSize: 65536, slots: [5], digests: Buffer.alloc(32) }));
    expect(slot.status).toBe(400);
    const c = await refused(f.admin.commitPoint(s.sessionId, { kind: 'no-such-kind' as 'express-full', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'x', virtualSize: 65536 }] }));
    expect(c.status).toBe(400);
    expect(c.hint).toMatch(/initial-replica/);
  });

  it('a killed upload leaves nothing visible', async () => {
    const data = Buffer.alloc(256 * 1024, 7);
    const digest = sha(data);
    const u = new URL(f.api.url);
    await new Promise<void>((resolve) => {
      const sock = net.connect(Number(u.port), u.hostname, () => {
        sock.write(`PUT /v1/chunks/${digest} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${f.agentToken}\r\nX-Hvprotect-Grant: ${up.grant}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${data.length}\r\n\r\n`);
        sock.write(data.subarray(0, 100_000), () => {
          sock.destroy();
          resolve();
        });
      });
    });
    await new Promise((r) => setTimeout(r, 200));
    expect((await chunkFiles(f)).filter((n) => n.startsWith(digest))).toEqual([]);
    expect(await up.agent.missingChunks([digest])).toEqual([digest]);
  });

  it('takes a chunk batch sent without a content-length (chunked) and refuses one that grows past the limit', async () => {
    const a = Buffer.alloc(100_000, 3);
    const b = Buffer.from('second chunk of the chunked batch');
    const body = Buffer.concat([Buffer.from(sha(a), 'hex'), u32(a.length), a, Buffer.from(sha(b), 'hex'), u32(b.length), b]);
    const ok = await chunked(f, '/v1/chunks/batch', [body.subarray(0, 7), body.subarray(7, 70_000), body.subarray(70_000)]);
    expect(ok.status).toBe(201);
    expect(await f.admin.getChunk(sha(a))).toEqual(a);
    expect(await f.admin.getChunk(sha(b))).toEqual(b);
    const big = Buffer.alloc(1024 * 1024, 9);
    const parts = Array.from({ length: 9 }, () => big); // 9 MiB > the 8 MiB single-chunk limit
    const tooBig = await chunked(f, `/v1/chunks/${sha(Buffer.concat(parts))}`, parts);
    expect(tooBig.status).toBe(413);
    expect(tooBig.json).toMatchObject({ error: 'BODY_TOO_LARGE' });
  });

  it('keeps every chunk of many parallel batches intact while upload memory is reused', async () => {
    // 24 batches of 8 distinct 256 KiB chunks, 6 at a time: each body lands in pooled memory that
    // the next upload reuses, so a buffer handed out twice would corrupt what is stored.
    const batches = Array.from({ length: 24 }, (_, k) => Array.from({ length: 8 }, (_, i) => {
      const data = Buffer.alloc(256 * 1024);
      for (let o = 0; o < data.length; o += 4) data.writeUInt32LE(((k * 8 + i + 1) * 2654435761 + o * 40503) >>> 0, o);
      return { digest: sha(data), data };
    }));
    let next = 0;
    await Promise.all(Array.from({ length: 6 }, async () => {
      while (next < batches.length) await up.agent.putChunks(batches[next++]);
    }));
    for (const batch of batches) for (const c of batch) expect((await f.admin.getChunk(c.digest)).equals(c.data)).toBe(true);
  });

  it('serves many parallel uploads on kept-alive connections', async () => {
    const chunks = Array.from({ length: 32 }, (_, i) => Buffer.alloc(64 * 1024, i + 1));
    const res = await Promise.all(chunks.map((c) => up.agent.putChunk(sha(c), c)));
    expect(res.every((r) => r.written)).toBe(true);
    expect(await up.agent.missingChunks(chunks.map(sha))).toEqual([]);
  });
});
