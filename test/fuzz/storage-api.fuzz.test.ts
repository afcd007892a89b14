// Hostile input to the storage API, fuzzed in process (fastify inject): JSON bodies, binary
// bodies, path parameters, headers and query strings. Every answer is a 2xx or a 4xx with the
// JSON error body { error, message, hint }; nothing is written outside the repository folder;
// memory stays bounded; the repository still verifies clean afterwards.
import { promises as fs } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import fc from 'fast-check';
import type { FastifyInstance } from 'fastify';
import { Repository, verifyRepository } from '../../repository';
import type { RecoveryPointManifest } from '../../repository';
import { SLOT_RECORD_SIZE } from '../../storage-api/protocol';
import { GrantAuthority, TokenStore, buildStorageApi } from '../../storage-api';
import { backup, randomDisk } from '../repository/support';

const SEED = 20261124;
const P = '/v1';

interface Reply { status: number; body: string; raw?: Buffer; json: Record<string, unknown> | undefined }

let parent: string;
let repo: Repository;
let app: FastifyInstance;
let agent: string;
let admin: string;
let grants: GrantAuthority;
/** The agent's job grants: a backup grant for the session under test, a restore grant for `point`. */
let backupGrant = '';
let restoreGrant = '';
let point: RecoveryPointManifest;
/** The disk backed up before the fuzzing (the point must restore to exactly these bytes). */
const disk = randomDisk(4 * 64 * 1024, 3);
const problems: string[] = [];

let base: { host: string; port: number };
let agentHttp: http.Agent;

/** A request exactly as written (no client-side path normalisation), over a real socket. */
async function call(method: string, url: string, opts: { token?: string | null; headers?: Record<string, string | string[]>; payload?: string | Buffer } = {}): Promise<Reply> {
  const headers: Record<string, string | string[]> = { ...(opts.headers ?? {}) };
  if (opts.token !== null && headers.authorization === undefined) headers.authorization = `Bearer ${opts.token ?? admin}`;
  // An agent calls as the job it was granted: reads of the restored point under its restore
  // grant, everything else under the backup grant of the session under test.
  if (opts.token === agent && headers['x-hvprotect-grant'] === undefined) {
    headers['x-hvprotect-grant'] = method === 'GET' && (url.includes('/datasources/') || url.includes('/chunks/')) ? restoreGrant : backupGrant;
  }
  const payload = opts.payload === undefined ? undefined : Buffer.isBuffer(opts.payload) ? opts.payload : Buffer.from(opts.payload);
  if (payload && headers['content-length'] === undefined) headers['content-length'] = String(payload.length);
  const r = await new Promise<Reply>((resolve, reject) => {
    let req: http.ClientRequest;
    try {
      req = http.request({ ...base, agent: agentHttp, method, path: url, headers, timeout: 20_000 }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const raw = Buffer.concat(parts);
          const body = raw.toString('utf8');
          let json: Record<string, unknown> | undefined;
          try {
            json = JSON.parse(body) as Record<string, unknown>;
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, body, raw, json });
        });
      });
    } catch (err) {
      // Node's own client refuses to send it (a header with a control character, …): not our case.
      resolve({ status: 0, body: `client refused: ${(err as Error).message}`, json: undefined });
      return;
    }
    req.on('timeout', () => req.destroy(new Error(`no answer in 20 s: ${method} ${url.slice(0, 100)}`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      // The server may close the connection on a body it refuses (a lying Content-Length).
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') resolve({ status: 0, body: `connection closed: ${err.code}`, json: undefined });
      else reject(err);
    });
    req.end(payload);
  });
  check(`${method} ${url.slice(0, 200)}`, r);
  return r;
}

/** Writes bytes on a fresh connection, half-closes it, returns whatever came back (5 s at most). */
function rawRequest(text: string): Promise<string> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    const sock = net.connect(base.port, base.host, () => sock.end(text));
    const done = () => resolve(Buffer.concat(parts).toString('latin1'));
    sock.setTimeout(5000, () => sock.destroy());
    sock.on('data', (c: Buffer) => parts.push(c));
    sock.on('close', done);
    sock.on('error', () => undefined);
  });
}

/** The invariant of every answer: 2xx/3xx, or a 4xx with the error body; never a 5xx. */
function check(what: string, r: Reply): void {
  if (r.status >= 500) problems.push(`${what}: ${r.status} ${r.body.slice(0, 300)}`);
  if (r.status >= 400) {
    const j = r.json;
    if (!j || typeof j.error !== 'string' || typeof j.message !== 'string' || typeof j.hint !== 'string') {
      problems.push(`${what}: ${r.status} without { error, message, hint }: ${r.body.slice(0, 300)}`);
    }
  }
}

function expectNoProblems(): void {
  const seen = [...new Set(problems)];
  problems.length = 0;
  expect(seen).toEqual([]);
}

beforeAll(async () => {
  parent = await mkdtemp(path.join(tmpdir(), 'hvp-fuzz-api-'));
  repo = await Repository.open(path.join(parent, ...AROUND_REPOSITORY, 'repo'), { create: true, unsafeSkipSync: true, defaultChunkSize: 64 * 1024, encoderThreads: 0, createChunkFolders: false });
  const tokens = await TokenStore.open();
  agent = await tokens.issue('fuzz-agent-q7', 'agent');
  admin = await tokens.issue('fuzz-admin-q7', 'admin');
  grants = GrantAuthority.ephemeral();
  app = buildStorageApi({ repository: repo, tokens, grants });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const addr = app.server.address();
  base = { host: '127.0.0.1', port: typeof addr === 'object' && addr ? addr.port : 0 };
  agentHttp = new http.Agent({ keepAlive: true, maxSockets: 4 });
  point = await backup(repo, 'vm1', disk);
  const lease = await repo.beginRestore('vm1', point.pointId);
  restoreGrant = grants.forRestore({ job: 'fuzz-restore', dataSource: 'vm1', pointId: point.pointId, leaseId: lease.leaseId, expiresAt: lease.expiresAt });
});

afterAll(async () => {
  agentHttp?.destroy();
  await app?.close();
  await repo?.close();
  if (parent) await fs.rm(parent, { recursive: true, force: true });
});

// The repository sits a few folders deep so that a path climbing out of it (`..`, `%2e%2e`, …)
// lands in folders the test watches; nothing may appear anywhere in that tree but the
// repository's own layout.
const AROUND_REPOSITORY = ['a', 'b', 'c', 'd'];
const REPOSITORY_LAYOUT = ['chunks', 'config', 'datasources', 'deletions.log', 'leases', 'lock', 'sessions'];

async function strayFiles(): Promise<string[]> {
  const stray: string[] = [];
  const walk = async (rel: string, depth: number): Promise<void> => {
    for (const name of await fs.readdir(path.join(parent, rel))) {
      const child = path.join(rel, name);
      if (depth < AROUND_REPOSITORY.length) {
        if (name === AROUND_REPOSITORY[depth]) await walk(child, depth + 1);
        else stray.push(child);
      } else if (name !== 'repo') stray.push(child);
    }
  };
  await walk('', 0);
  const repoDir = path.join(...AROUND_REPOSITORY, 'repo');
  for (const name of await fs.readdir(path.join(parent, repoDir))) if (!REPOSITORY_LAYOUT.includes(name)) stray.push(path.join(repoDir, name));
  return stray;
}

afterEach(async () => {
  expect(await strayFiles()).toEqual([]);
});

// ---- generators ---------------------------------------------------------------------------

const hostileSegment = fc.oneof(
  fc.constantFrom('..', '%2e%2e', '%2E%2E', '.', '%2f', '..%2f..%2fetc%2fpasswd', '%00', 'a%00b', '%ff%fe', '%', '%zz',
    'vm1', 'disk0', 'x'.repeat(10_000), '%2e%2e%2f%2e%2e%2f', '...', '.hidden', 'CON', 'aux.txt', '%E2%80%AE', '%F0%9F%92%A9',
    '0'.repeat(64), 'f'.repeat(64), '0'.repeat(32), '20261124T154130.123Z', '99999999T999999.999Z', '-1', '1e400', 'null', '__proto__', 'constructor'),
  fc.string({ maxLength: 40 }).map((s) => encodeURIComponent(s)),
  fc.string({ unit: 'binary', maxLength: 20 }).map((s) => encodeURIComponent(s)),
);

const jsonish = fc.oneof(
  fc.jsonValue({ maxDepth: 4 }),
  fc.record({
    dataSource: fc.oneof(fc.constantFrom('vm1', 'fuzz-ds', '../x', '', null, 7, ['vm1'], { a: 1 }), fc.string({ maxLength: 30 })),
    basePoint: fc.oneof(fc.constant(0).map(() => point.pointId), fc.constantFrom('../../x', 5, null, '20200101T000000.000Z'), fc.string({ maxLength: 30 })),
    chunkSize: fc.oneof(fc.integer(), fc.double(), fc.constantFrom(65536, 2 ** 40, -1, '65536', null)),
    digests: fc.oneof(fc.array(fc.string({ maxLength: 70 }), { maxLength: 5 }), fc.constantFrom('x', 5, null, [null], [[]], [{}])),
    name: fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom(null, 5, 'admin', '../../etc', 'x'.repeat(300))),
    role: fc.constantFrom('agent', 'admin', 'root', null, 5, undefined),
    maxSize: fc.oneof(fc.constantFrom('20GB', '-1GB', '1e400%', 'UNBOUNDED2', '15%', '0%', '101%', '99999999999999999999EB', 'NaN', 'Infinity', '1.5TB', '', 5, -5, null, true, { kind: 'bytes', bytes: -1 }, { kind: 'percent', percent: 1e9 }, { kind: 'evil' }, [1]), fc.string({ maxLength: 20 })),
    maxPoints: fc.oneof(fc.integer(), fc.double(), fc.constantFrom('3', null, 449, 0, 1e308)),
    retentionRangeDays: fc.oneof(fc.integer(), fc.double(), fc.constantFrom('3', null, 3651, 0)),
    ttlSeconds: fc.oneof(fc.integer(), fc.double(), fc.constantFrom('3', null, 1e308, -1, 8.64e15, Number.MAX_SAFE_INTEGER, { a: 1 })),
    readData: fc.constantFrom(true, false, 'yes', null),
    quarantine: fc.constantFrom(true, false, 'no', null),
    kind: fc.constantFrom('initial-replica', 'express-full', 'bogus', 5, null),
    mode: fc.constantFrom('online', 'offline', 'x', null),
    createdAt: fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('2026-01-01T00:00:00Z', '+275760-09-13T00:00:00.001Z', 8.64e15 + 1, -1e20, 1e400, null, {})),
    disks: fc.oneof(
      fc.array(fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.record({ diskId: fc.constantFrom('disk0', '../d', 5, null), fileName: fc.oneof(fc.string({ maxLength: 10 }), fc.constant(5)), virtualSize: fc.oneof(fc.integer(), fc.constantFrom(2 ** 62, -1, 1.5, '1', 262144)) }, { requiredKeys: [] })), { maxLength: 4 }),
      fc.constantFrom(null, 'disk0', 5, {}),
    ),
    vm: fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.constantFrom(null, 'x', 5)),
  }, { requiredKeys: [] }),
);

/** Every route that takes JSON (path parameters filled with valid or known ids). */
function jsonRoutes(sid: string): Array<[string, string, string | undefined]> {
  const pid = point.pointId;
  return [
    ['POST', `${P}/chunks/missing`, agent],
    ['POST', `${P}/chunks/read`, agent],
    // What only the protection server does (in process; over HTTP with an admin token).
    ['POST', `${P}/sessions`, admin],
    ['POST', `${P}/sessions/${sid}/commit`, admin],
    ['POST', `${P}/datasources/vm1/points/${pid}/restore-leases`, admin],
    ['POST', `${P}/admin/tokens`, admin],
    ['POST', `${P}/admin/shadowstorage`, admin],
    ['PATCH', `${P}/admin/shadowstorage/vm1`, admin],
    ['POST', `${P}/admin/verify`, admin],
    ['POST', `${P}/admin/gc`, admin],
    ['POST', `${P}/admin/datasources/vm1/enforce-retention`, admin],
  ];
}

/** Opens a session as the server does (admin) and grants the agent uploads to it (disks as a host might report them). */
async function openSession(): Promise<string> {
  const r = await call('POST', `${P}/sessions`, { token: admin, payload: JSON.stringify({ dataSource: 'fuzz-session' }), headers: { 'content-type': 'application/json' } });
  expect(r.status).toBe(201);
  const sessionId = String(r.json!.sessionId);
  const huge = Number.MAX_SAFE_INTEGER;
  backupGrant = grants.forSession({ job: 'fuzz-backup', dataSource: 'fuzz-session', sessionId, disks: ['disk0', 'disk8', 'disk9'].map((diskId) => ({ diskId, virtualSize: huge })) });
  return sessionId;
}

// ---- properties ----------------------------------------------------------------------------

describe('storage API under hostile input', () => {
  it('random JSON bodies on every JSON route answer 2xx or 4xx with an error body', async () => {
    const sid = await openSession();
    const routes = jsonRoutes(sid);
    await fc.assert(
      fc.asyncProperty(fc.nat(routes.length - 1), jsonish, async (i, body) => {
        const [method, url, token] = routes[i];
        await call(method, url, { token, payload: JSON.stringify(body) ?? 'null', headers: { 'content-type': 'application/json' } });
      }),
      { seed: SEED, numRuns: 400 },
    );
    expectNoProblems();
  });

  it('malformed JSON text, deep nesting and wrong content types answer 4xx', async () => {
    const sid = await openSession();
    const routes = jsonRoutes(sid);
    const texts = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.constantFrom('{', '{"a":', '[1,2', '{"__proto__":{"x":1}}', '{"constructor":{"prototype":{"x":1}}}', 'nul', '\u0000', '\ufeff{}', '{"a":1}garbage', '1e400', '"\\ud800"',
        '['.repeat(100_000) + ']'.repeat(100_000), '{"vm":' + '['.repeat(200_000) + ']'.repeat(200_000) + ',"kind":"initial-replica","mode":"online","disks":[{"diskId":"disk0","fileName":"d","virtualSize":262144}]}',
        '{"a":"' + 'x'.repeat(2 * 1024 * 1024) + '"}'),
    );
    const types = fc.constantFrom('application/json', 'application/json; charset=utf-16', 'text/plain', 'application/octet-stream', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', '', 'application/json; charset=latin1', ';;;', 'application/json\u0000');
    await fc.assert(
      fc.asyncProperty(fc.nat(routes.length - 1), texts, types, async (i, text, type) => {
        const [method, url, token] = routes[i];
        const headers: Record<string, string> = {};
        if (type) headers['content-type'] = type;
        await call(method, url, { token, payload: text, headers });
      }),
      { seed: SEED + 1, numRuns: 200 },
    );
    // A deeply nested "vm" in a real commit: refused, not a 500 when the manifest is written.
    const deep = '{"kind":"initial-replica","mode":"online","disks":[{"diskId":"disk0","fileName":"d","virtualSize":262144}],"vm":' + '['.repeat(300_000) + ']'.repeat(300_000) + '}';
    const sid2 = await openSession();
    const z = Buffer.alloc(8 * SLOT_RECORD_SIZE);
    for (let s = 0; s < 4; s++) z.writeBigUInt64LE(BigInt(s), s * SLOT_RECORD_SIZE);
    const patched = await call('POST', `${P}/sessions/${sid2}/disks/disk0/slots?virtualSize=262144`, { token: agent, payload: z.subarray(0, 4 * SLOT_RECORD_SIZE), headers: { 'content-type': 'application/octet-stream' } });
    expect(patched.status).toBe(200);
    const r = await call('POST', `${P}/sessions/${sid2}/commit`, { token: admin, payload: deep, headers: { 'content-type': 'application/json' } });
    expect(r.status).toBe(400);
    expectNoProblems();
  });

  it('random and crafted binary bodies for chunk uploads, batches, slot patches and full indexes', async () => {
    const sid = await openSession();
    const digestHex = fc.oneof(fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex')), fc.constant('0'.repeat(64)));
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
      fc.nat(5).map((n) => Buffer.alloc(n * SLOT_RECORD_SIZE + (n % 3))),
      // slot records with absurd slot numbers
      fc.array(fc.tuple(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.uint8Array({ minLength: 32, maxLength: 32 })), { maxLength: 8 }).map((recs) => {
        const b = Buffer.alloc(recs.length * SLOT_RECORD_SIZE);
        recs.forEach(([s, d], i) => {
          b.writeBigUInt64LE(s, i * SLOT_RECORD_SIZE);
          Buffer.from(d).copy(b, i * SLOT_RECORD_SIZE + 8);
        });
        return b;
      }),
      // chunk batch records claiming huge or wrong lengths
      fc.array(fc.tuple(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.oneof(fc.nat(), fc.constantFrom(0, 0xffffffff, 2 ** 31)), fc.uint8Array({ maxLength: 64 })), { maxLength: 4 }).map((recs) =>
        Buffer.concat(recs.flatMap(([d, len, data]) => {
          const h = Buffer.alloc(36);
          Buffer.from(d).copy(h);
          h.writeUInt32LE(len >>> 0, 32);
          return [h, Buffer.from(data)];
        })),
      ),
    );
    const targets = fc.oneof(
      digestHex.map((d) => ['PUT', `${P}/chunks/${d}`]),
      fc.constant(['POST', `${P}/chunks/batch`]),
      fc.oneof(fc.constantFrom('262144', '1', '0', '-1', '9007199254740993', '1e400', '', 'abc', String(2 ** 52), String(2 ** 62)), fc.nat().map(String)).chain((vs) =>
        fc.constantFrom(['POST', `${P}/sessions/${sid}/disks/disk0/slots?virtualSize=${vs}`], ['PUT', `${P}/sessions/${sid}/disks/disk1/index?virtualSize=${vs}`], ['POST', `${P}/sessions/${sid}/disks/disk2/slots?virtualSize=${vs}&base=${point.pointId}`])),
    );
    const types = fc.constantFrom('application/octet-stream', 'application/json', 'text/plain', undefined);
    await fc.assert(
      fc.asyncProperty(targets, bytes, types, async ([method, url], body, type) => {
        const headers: Record<string, string> = {};
        if (type) headers['content-type'] = type;
        await call(method, url, { token: agent, payload: body, headers });
      }),
      { seed: SEED + 2, numRuns: 300 },
    );
    // Oversize bodies: one byte over each limit is refused with 413, not read into memory whole.
    const before = process.memoryUsage().heapUsed;
    const over = await call('PUT', `${P}/chunks/${'a'.repeat(64)}`, { token: agent, payload: Buffer.alloc(8 * 1024 * 1024 + 1), headers: { 'content-type': 'application/octet-stream' } });
    expect(over.status).toBe(413);
    const ragged = await call('POST', `${P}/sessions/${sid}/disks/disk0/slots?virtualSize=262144`, { token: agent, payload: Buffer.alloc(SLOT_RECORD_SIZE * 3 + 1), headers: { 'content-type': 'application/octet-stream' } });
    expect(ragged.status).toBe(400);
    // A slot patch far outside a disk of 2^53-1 bytes: refused without a sparse index of terabytes.
    const huge = Buffer.alloc(SLOT_RECORD_SIZE);
    huge.writeBigUInt64LE(2n ** 40n, 0);
    const far = await call('POST', `${P}/sessions/${sid}/disks/disk9/slots?virtualSize=${Number.MAX_SAFE_INTEGER}`, { token: agent, payload: huge, headers: { 'content-type': 'application/octet-stream' } });
    expect(far.status).toBe(400);
    // The largest patch the protocol allows (1M slots, 40 MiB) is taken, not a stack overflow.
    const million = Buffer.alloc(1024 * 1024 * SLOT_RECORD_SIZE);
    for (let s = 0; s < 1024 * 1024; s++) million.writeBigUInt64LE(BigInt(s), s * SLOT_RECORD_SIZE);
    const big = await call('POST', `${P}/sessions/${sid}/disks/disk8/slots?virtualSize=${1024 * 1024 * 64 * 1024}`, { token: agent, payload: million, headers: { 'content-type': 'application/octet-stream' } });
    expect(big.status).toBe(200);
    expect(process.memoryUsage().heapUsed - before).toBeLessThan(256 * 1024 * 1024);
    expectNoProblems();
  });

  it('hostile path parameters never become paths and answer 4xx', async () => {
    const sid = await openSession();
    const pid = point.pointId;
    const templates: Array<[string, (x: string) => string, string?]> = [
      ['GET', (x) => `${P}/chunks/${x}`],
      ['PUT', (x) => `${P}/chunks/${x}`],
      ['GET', (x) => `${P}/sessions/${x}`],
      ['DELETE', (x) => `${P}/sessions/${x}`],
      ['POST', (x) => `${P}/sessions/${x}/disks/disk0/slots?virtualSize=262144`],
      ['POST', (x) => `${P}/sessions/${sid}/disks/${x}/slots?virtualSize=262144`],
      ['PUT', (x) => `${P}/sessions/${sid}/disks/${x}/index?virtualSize=262144`],
      ['POST', (x) => `${P}/sessions/${x}/commit`, '{}'],
      ['GET', (x) => `${P}/datasources/${x}/points`],
      ['GET', (x) => `${P}/datasources/${x}/points/${pid}`],
      ['GET', (x) => `${P}/datasources/vm1/points/${x}`],
      ['GET', (x) => `${P}/datasources/vm1/points/${pid}/disks/${x}/index`],
      ['GET', (x) => `${P}/datasources/vm1/points/${x}/disks/disk0/raw`],
      ['GET', (x) => `${P}/datasources/${x}/points/${pid}/disks/disk0/raw`],
      ['POST', (x) => `${P}/datasources/${x}/points/${pid}/restore-leases`, '{}'],
      ['DELETE', (x) => `${P}/restore-leases/${x}`],
      ['DELETE', (x) => `${P}/admin/tokens/${x}`],
      ['PATCH', (x) => `${P}/admin/shadowstorage/${x}`, '{}'],
      ['POST', (x) => `${P}/admin/datasources/${x}/delete-oldest`],
      ['POST', (x) => `${P}/admin/datasources/${x}/enforce-retention`],
      ['GET', (x) => `${P}/admin/shadowstorage?dataSource=${x}`],
      ['GET', (x) => `${P}/${x}/chunks/${'0'.repeat(64)}`],
    ];
    await fc.assert(
      fc.asyncProperty(fc.nat(templates.length - 1), hostileSegment, async (i, seg) => {
        const [method, url, json] = templates[i];
        const binary = url('X').includes('/slots') || url('X').includes('/index?') || (method === 'PUT' && url('X').includes('/chunks/'));
        const r = await call(method, url(seg), {
          token: admin,
          payload: json ?? (binary ? Buffer.alloc(SLOT_RECORD_SIZE) : undefined),
          headers: json ? { 'content-type': 'application/json' } : binary ? { 'content-type': 'application/octet-stream' } : {},
        });
        // "vm1", a real session or point id are legitimate; anything climbing out is not.
        if (/\.\.|%2e%2e|%00|%2f/i.test(seg)) expect(r.status).toBeGreaterThanOrEqual(400);
      }),
      { seed: SEED + 3, numRuns: 400 },
    );
    expectNoProblems();
  });

  it('wrong, duplicate and huge headers; Range headers; random query strings', async () => {
    const pid = point.pointId;
    const raw = `${P}/datasources/vm1/points/${pid}/disks/disk0/raw`;
    const auth = fc.oneof(
      fc.constantFrom(`Bearer ${agent}`, `bearer ${agent}`, `Bearer  ${agent}`, `Bearer ${agent} `, `Basic ${Buffer.from('a:b').toString('base64')}`, 'Bearer', 'Bearer ', 'Bearer hvp_', `Bearer hvp_${'A'.repeat(10_000)}`, `Bearer ${agent}x`, `Bearer ${agent.slice(0, -1)}`, '', `Token ${agent}`, 'Bearer \u00e9\u00e9'),
      fc.string({ maxLength: 100 }).map((s) => `Bearer ${s.replace(/[\r\n]/g, '')}`),
    );
    const range = fc.oneof(
      fc.constantFrom('bytes=0-', 'bytes=0-0', 'bytes=5-2', 'bytes=-5', 'bytes=0-99999999999999999999', 'bytes=99999999999999999999-', 'bytes=0-1,2-3', 'bytes=262143-262143', 'bytes=262144-', 'items=0-1', 'bytes=1e3-', 'bytes= 0-1', '', 'bytes=9007199254740993-9007199254740999'),
      fc.tuple(fc.nat(300_000), fc.option(fc.nat(300_000))).map(([a, b]) => `bytes=${a}-${b ?? ''}`),
      fc.string({ maxLength: 30 }),
    );
    const query = fc.oneof(
      fc.constantFrom('offset=-1', 'offset=1e400', 'length=99999999999999999999', 'offset=262144&length=0', 'offset=0&length=262145', 'offset=a', 'offset=&length=', 'offset=1&offset=2', 'length[]=1', 'offset[a]=1', '%', '&&&=', 'offset=9007199254740992&length=1', 'virtualSize=1&virtualSize=2', 'dataSource=../x', 'dataSource=vm1&dataSource=vm1'),
      fc.dictionary(fc.constantFrom('offset', 'length', 'virtualSize', 'base', 'dataSource', 'x'), fc.string({ maxLength: 30 })).map((d) => new URLSearchParams(d).toString()),
      fc.string({ maxLength: 60 }).map((s) => encodeURI(s).replace(/#/g, '%23')),
    );
    const routes = fc.constantFrom(raw, `${P}/datasources/vm1/points`, `${P}/datasources/vm1/points/${pid}`, `${P}/admin/shadowstorage`, `${P}/admin/tokens`, `${P}/chunks/${'0'.repeat(64)}`, `${P}/datasources/vm1/points/${pid}/disks/disk0/index`);
    await fc.assert(
      fc.asyncProperty(routes, auth, fc.option(range), fc.option(query), fc.boolean(), async (url, a, rg, q, dup) => {
        const headers: Record<string, string | string[]> = { authorization: dup ? [a, `Bearer ${admin}`] : a };
        if (rg !== null) headers.range = rg;
        if (dup) headers['content-type'] = ['application/json', 'application/octet-stream'];
        await call('GET', q === null ? url : `${url}?${q}`, { headers });
      }),
      { seed: SEED + 4, numRuns: 400 },
    );
    // Content-Length that lies, huge header values, a flood of headers.
    for (const [len, payload] of [['5', '{}'], ['0', '{"dataSource":"vm1"}'], ['-1', '{}'], ['99999999999', '{}'], ['abc', '{}'], ['2, 2', '{}'], ['1', '{}']] as const) {
      const answer = await rawRequest(`POST ${P}/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${agent}\r\nContent-Type: application/json\r\nContent-Length: ${len}\r\n\r\n${payload}`);
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);
      // An answer (4xx, or 201 for a body cut to its declared length) or a closed connection; never a 5xx.
      if (status >= 500) problems.push(`Content-Length ${len}: ${answer.slice(0, 300)}`);
    }
    // Two Content-Length headers, Transfer-Encoding with Content-Length (request smuggling shapes).
    for (const head of ['Content-Length: 2\r\nContent-Length: 3', 'Transfer-Encoding: chunked\r\nContent-Length: 2', 'Transfer-Encoding: gzip, chunked']) {
      const answer = await rawRequest(`POST ${P}/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${agent}\r\nContent-Type: application/json\r\n${head}\r\n\r\n{}`);
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);
      if (status >= 500 || (status >= 200 && status < 300)) problems.push(`${head}: ${answer.slice(0, 300)}`);
    }
    const many: Record<string, string> = { 'content-type': 'application/json' };
    for (let i = 0; i < 500; i++) many[`x-fuzz-${i}`] = 'y'.repeat(100);
    await call('POST', `${P}/chunks/missing`, { token: agent, payload: '{"digests":[]}', headers: { ...many, 'x-huge': 'z'.repeat(60_000) } });
    expectNoProblems();
  });

  it('leaves a repository that verifies clean, with bounded memory', async () => {
    const before = process.memoryUsage();
    // The biggest legal "which are missing?" query, many times over: memory does not grow with it.
    const digests = Array.from({ length: 16384 }, (_, i) => i.toString(16).padStart(64, '0'));
    for (let i = 0; i < 5; i++) {
      const r = await call('POST', `${P}/chunks/missing`, { token: agent, payload: JSON.stringify({ digests }), headers: { 'content-type': 'application/json' } });
      expect(r.status).toBe(200);
    }
    const tooMany = await call('POST', `${P}/chunks/missing`, { token: agent, payload: JSON.stringify({ digests: [...digests, ...digests.slice(0, 1)] }), headers: { 'content-type': 'application/json' } });
    expect(tooMany.status).toBe(400);
    expect(process.memoryUsage().heapUsed - before.heapUsed).toBeLessThan(256 * 1024 * 1024);
    const report = await verifyRepository(repo, { readData: true });
    expect(report.damagedIndexes).toEqual([]);
    expect(report.damagedChunks).toEqual([]);
    expect(report.ok).toBe(true);
    // The point taken before the fuzzing still restores.
    const r = await call('GET', `${P}/datasources/vm1/points/${point.pointId}/disks/disk0/raw`, { token: agent });
    expect(r.status).toBe(200);
    expect(r.raw?.equals(disk)).toBe(true);
    // The index is streamed whole (64-byte header + 32 bytes per slot).
    const idx = await call('GET', `${P}/datasources/vm1/points/${point.pointId}/disks/disk0/index`, { token: agent });
    expect(idx.status).toBe(200);
    expect(idx.raw?.length).toBe(64 + 4 * 32);
    expectNoProblems();
  });
});
