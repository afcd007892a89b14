// #18's denial-of-service attacks on the storage API, replayed over real sockets: an
// unauthenticated slow body is answered 401 and its socket closed; a too-large body 413 and
// closed; an authenticated body that trickles is cut off (408); one credential's flood waits in
// its own queue, then is refused (429), while another credential is served at once; a slot patch
// claiming 64 TiB is refused before an index is staged.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { StorageApiError, StorageClient } from '../../storage-api';
import { startFixture, type Fixture } from './support';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A raw HTTP request whose body is only begun; resolves with the response head and when the socket closed. */
function begin(f: Fixture, opts: { method: string; path: string; token?: string; grant?: string; length: number; send: Buffer }) {
  const u = new URL(f.api.url);
  const socket = net.connect(Number(u.port), u.hostname);
  let text = '';
  const closed = new Promise<number>((resolve) => socket.on('close', () => resolve(Date.now())));
  socket.on('error', () => undefined);
  socket.on('data', (d) => (text += d.toString('latin1')));
  const auth = (opts.token ? `Authorization: Bearer ${opts.token}\r\n` : '') + (opts.grant ? `X-Hvprotect-Grant: ${opts.grant}\r\n` : '');
  socket.write(`${opts.method} ${opts.path} HTTP/1.1\r\nHost: x\r\n${auth}Content-Type: application/octet-stream\r\nContent-Length: ${opts.length}\r\n\r\n`);
  socket.write(opts.send);
  return {
    socket,
    closed,
    head: async () => {
      for (let i = 0; i < 200 && !text.includes('\r\n\r\n'); i++) await new Promise((r) => setTimeout(r, 25));
      return text;
    },
  };
}

describe('connections end with a refusal', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await startFixture();
  });
  afterAll(async () => f.close());

  it('an unauthenticated slow body gets 401 and its socket is closed while the body is unsent', async () => {
    const started = Date.now();
    const r = begin(f, { method: 'PUT', path: `/v1/chunks/${'a'.repeat(64)}`, length: 4 * 1024 * 1024, send: Buffer.alloc(10) });
    const head = await r.head();
    expect(head).toMatch(/^HTTP\/1\.1 401/);
    expect(head.toLowerCase()).toContain('connection: close');
    expect((await r.closed) - started).toBeLessThan(5000);
  });

  it('a body over the limit gets 413 and the socket is closed', async () => {
    const { grant } = await f.backupJob('vm-big');
    const r = begin(f, { method: 'PUT', path: `/v1/chunks/${'a'.repeat(64)}`, token: f.agentToken, grant, length: 64 * 1024 * 1024, send: Buffer.alloc(10) });
    const head = await r.head();
    expect(head).toMatch(/^HTTP\/1\.1 413/);
    expect(head.toLowerCase()).toContain('connection: close');
    await r.closed;
  });
});

describe('bounds', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await startFixture({}, { bounds: { maxInFlightPerCredential: 2, maxQueuedPerCredential: 2, minBodyBytesPerSecond: 1000, bodyRateWindowMs: 400 } });
  });
  afterAll(async () => f.close());

  it('a body that trickles below the minimum rate is cut off with 408, and the server serves on', async () => {
    const data = Buffer.alloc(4096, 7);
    const job = await f.backupJob('vm-slow');
    const r = begin(f, { method: 'PUT', path: `/v1/chunks/${sha(data)}`, token: f.agentToken, grant: job.grant, length: data.length, send: data.subarray(0, 10) });
    const head = await r.head();
    expect(head).toMatch(/^HTTP\/1\.1 408/);
    expect(head).toContain('BODY_TOO_SLOW');
    await r.closed;
    await job.agent.putChunk(sha(data), data);
    expect(await job.agent.missingChunks([sha(data)])).toEqual([]);
  });

  it("one credential's requests beyond its slots wait, beyond its queue are refused (429); another credential is served", async () => {
    // Two uploads hold hv-host-01's slots with bodies that keep arriving (above the minimum rate).
    const data = Buffer.alloc(64 * 1024, 3);
    const job = await f.backupJob('vm');
    const sid = job.session.sessionId;
    const holders = [0, 1].map(() => begin(f, { method: 'PUT', path: `/v1/chunks/${sha(data)}`, token: f.agentToken, grant: job.grant, length: data.length, send: data.subarray(0, 1024) }));
    const trickle = holders.map((h) => {
      let sent = 1024;
      return setInterval(() => {
        if (sent + 1024 <= data.length - 1024) {
          h.socket.write(data.subarray(sent, sent + 1024));
          sent += 1024;
        }
      }, 200);
    });
    await new Promise((r) => setTimeout(r, 200));
    const waiting = [job.agent.getSession(sid), job.agent.getSession(sid)];
    await new Promise((r) => setTimeout(r, 200));
    await expect(job.agent.getSession(sid)).rejects.toMatchObject({ status: 429, code: 'TOO_MANY_REQUESTS' });
    // Another credential is not behind hv-host-01's queue.
    expect(await f.admin.listShadowStorage()).toEqual(expect.any(Array));
    let settled = false;
    void Promise.allSettled(waiting).then(() => (settled = true));
    await new Promise((r) => setTimeout(r, 200));
    expect(settled).toBe(false);
    // The holders finish; the waiting requests are served.
    trickle.forEach(clearInterval);
    for (const h of holders) h.socket.destroy();
    expect((await Promise.all(waiting)).map((x) => x.sessionId)).toEqual([sid, sid]);
    expect((await new StorageClient(f.api.url, f.agentToken).withGrant(job.grant).getSession(sid)).sessionId).toBe(sid);
  });
});

describe('virtual size cap', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await startFixture({ maxVirtualSize: 1024 ** 3 });
  });
  afterAll(async () => f.close());

  /** Bytes of every file under dir (apparent sizes: a sparse 8 GiB index counts as 8 GiB). */
  async function apparentBytes(dir: string): Promise<number> {
    let n = 0;
    for (const e of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
      if (e.isFile()) n += (await fs.stat(path.join(e.parentPath, e.name))).size;
    }
    return n;
  }

  it('a 40-byte slot patch claiming 64 TiB is refused before any index is staged; a real disk goes on', async () => {
    const data = Buffer.alloc(64 * 1024, 9);
    // A host that reported 64 TiB (the grant lets it through): the repository's own cap holds.
    const { session: s, agent } = await f.backupJob('vm', {}, { disk0: 64 * 1024 ** 4 });
    await agent.putChunk(sha(data), data);
    const before = await apparentBytes(f.dir);
    const started = Date.now();
    const e = await agent.putIndex(s.sessionId, 'disk0', { virtualSize: 64 * 1024 ** 4, basePoint: null, slots: [0], digests: Buffer.from(sha(data), 'hex') }).then(
      () => undefined,
      (err: StorageApiError) => err,
    );
    expect(e).toBeInstanceOf(StorageApiError);
    expect(e).toMatchObject({ status: 400, code: 'INVALID_ARGUMENT' });
    expect(e!.message).toMatch(/virtual size 70368744177664 is above this repository's largest disk, 1073741824 bytes.*--max-disk-size/);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(await apparentBytes(f.dir)).toBeLessThan(before + 64 * 1024);
    // The same session takes the disk at its real size and commits.
    await agent.putIndex(s.sessionId, 'disk0', { virtualSize: data.length, basePoint: null, slots: [0], digests: Buffer.from(sha(data), 'hex') });
    const m = await f.admin.commitPoint(s.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'd.vhdx', virtualSize: data.length }] });
    expect(m.disks[0].virtualSize).toBe(data.length);
  });
});
