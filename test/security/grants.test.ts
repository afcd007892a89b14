// Per-job grants (#11, #18): an agent token alone reaches nothing; a backup grant uploads to its
// own session only, its disks at most the size the host reported; a restore grant reads its own
// point only, and only the chunks that point names; only the server creates, commits or deletes
// points. Each attack the audit made with hv01's token is replayed here against a real storage
// API, and the points taken before and after it still restore bit for bit.
import { createHash } from 'node:crypto';
import { allSlots, bufferDiskReader, ingestDisk } from '../../ingest';
import { GrantAuthority, StorageApiError, StorageClient } from '../../storage-api';
import type { RecoveryPointManifest } from '../../repository';
import { makeDisk, readAll, startFixture, type Fixture } from '../storage-api/support';

const CHUNK = 64 * 1024;
const SIZE = 12 * CHUNK;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let f: Fixture;
const disks: Record<string, Buffer> = {};
const points: Record<string, RecoveryPointManifest> = {};

/** One backup as the server runs it: its session and commit, the agent's upload under the job grant. */
async function backup(ds: string, disk: Buffer, basePoint?: string): Promise<RecoveryPointManifest> {
  const { session, agent } = await f.backupJob(ds, { chunkSize: CHUNK, basePoint }, { disk0: disk.length });
  await ingestDisk({ reader: bufferDiskReader(disk), storage: agent, sessionId: session.sessionId, diskId: 'disk0', chunkSize: CHUNK, slots: allSlots(disk.length, CHUNK) });
  return f.admin.commitPoint(session.sessionId, { kind: basePoint ? 'express-full' : 'initial-replica', mode: 'online', disks: [{ diskId: 'disk0', fileName: `${ds}.vhdx`, virtualSize: disk.length }] });
}

async function refused(p: Promise<unknown>, status = 403): Promise<StorageApiError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(StorageApiError);
  expect((err as StorageApiError).status).toBe(status);
  return err as StorageApiError;
}

/** Every point of every data source restores to the bytes it was taken from. */
async function everythingRestores(): Promise<void> {
  for (const [ds, p] of Object.entries(points)) {
    expect([ds, (await readAll(await f.admin.openDiskStream(p, 'disk0'))).equals(disks[ds])]).toEqual([ds, true]);
  }
  expect((await f.admin.verify({ readData: true })).ok).toBe(true);
}

beforeAll(async () => {
  f = await startFixture({ createChunkFolders: false, encoderThreads: 0 });
  for (const [ds, seed] of [['vm-a', 1], ['vm-b', 2]] as const) {
    disks[ds] = makeDisk(SIZE, seed);
    points[ds] = await backup(ds, disks[ds]);
  }
});
afterAll(() => f.close());

describe('an agent token alone', () => {
  it('reads nothing, writes nothing, begins and commits nothing (403 naming the missing grant)', async () => {
    const a = points['vm-a'];
    const chunk = disks['vm-a'].subarray(0, CHUNK);
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['list points', () => f.agent.listPoints('vm-a')],
      ['read a point', () => f.agent.getPoint(a)],
      ['read an index', () => f.agent.getIndex(a, 'disk0')],
      ['read a raw disk', () => f.agent.openDiskStream(a, 'disk0')],
      ['read a chunk', () => f.agent.getChunk(sha(chunk))],
      ['missing chunks', () => f.agent.missingChunks([sha(chunk)])],
      ['upload a chunk', () => f.agent.putChunk(sha(Buffer.from('planted')), Buffer.from('planted'))],
      ['begin a session', () => f.agent.beginSession('constructor')],
      ['commit', () => f.agent.commitPoint('0'.repeat(32), { kind: 'express-full', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'x', virtualSize: SIZE }] })],
      ['take a restore lease', () => f.agent.beginRestore(a, 7 * 86400)],
      ['end a restore lease', () => f.agent.endRestore('0'.repeat(32))],
    ];
    for (const [what, call] of calls) {
      const e = await call().then(() => undefined, (err: unknown) => err as StorageApiError);
      expect([what, e?.status, e?.code]).toEqual([what, 403, 'FORBIDDEN']);
    }
    expect(String((await refused(f.agent.getPoint(a))).message)).toMatch(/no job grant/);
    // Its own credential it may check.
    expect(await f.agent.whoami()).toEqual({ name: 'hv-host-01', role: 'agent' });
    expect((await f.repo.listDataSources()).sort()).toEqual(['vm-a', 'vm-b']);
    expect(await f.repo.listSessions()).toEqual([]);
    expect(await f.repo.listRestoreLeases()).toEqual([]);
  });
});

describe("a backup job's grant", () => {
  it('uploads to its own session only; refused on another data source, session, disk or size, and on commits', async () => {
    const mine = await f.backupJob('vm-a', { chunkSize: CHUNK, basePoint: points['vm-a'].pointId }, { disk0: SIZE });
    const other = await f.backupJob('vm-b', { chunkSize: CHUNK, basePoint: points['vm-b'].pointId }, { disk0: SIZE });
    const b = points['vm-b'];
    const planted = Buffer.from('PLANTED-BY-STOLEN-AGENT-TOKEN'.padEnd(CHUNK, '!'));
    const digest = Buffer.from(sha(planted), 'hex');

    // Uploads are what the grant is for.
    await mine.agent.putChunk(sha(planted), planted);
    // Another data source's session, point, index, raw bytes and chunks: refused.
    const e = await refused(mine.agent.putIndex(other.session.sessionId, 'disk0', { virtualSize: SIZE, slots: [0], digests: digest }));
    expect(e.message).toMatch(new RegExp(`is for session ${mine.session.sessionId}, not ${other.session.sessionId}`));
    await refused(mine.agent.getPoint(b));
    await refused(mine.agent.getIndex(b, 'disk0'));
    await refused(mine.agent.openDiskStream(b, 'disk0'));
    await refused(mine.agent.getChunk(sha(disks['vm-b'].subarray(0, CHUNK))));
    // Its own base index is readable (a consistency check compares against it), no other index.
    expect((await mine.agent.getIndex(points['vm-a'], 'disk0')).virtualSize).toBe(SIZE);
    // No commit, no new session, no deletion: those are the server's.
    await refused(mine.agent.commitPoint(mine.session.sessionId, { kind: 'express-full', mode: 'online', createdAt: '9999-12-31T00:00:00.000Z', disks: [{ diskId: 'disk0', fileName: 'x', virtualSize: SIZE }] }));
    await refused(mine.agent.beginSession('vm-a'));
    await refused(mine.agent.abortSession(other.session.sessionId));
    await refused(mine.agent.deleteOldestPoint('vm-b'));
    // A disk the host did not report, a size above what it reported, another base.
    expect((await refused(mine.agent.putIndex(mine.session.sessionId, 'disk1', { virtualSize: SIZE, slots: [0], digests: digest }))).message).toMatch(/does not cover disk disk1/);
    const huge = await refused(mine.agent.putIndex(mine.session.sessionId, 'disk0', { virtualSize: 64 * 1024 ** 4, slots: [0], digests: digest }));
    expect(huge.message).toMatch(new RegExp(`disk disk0 is ${SIZE} bytes as its host reported it`));
    await refused(mine.agent.putIndex(mine.session.sessionId, 'disk0', { virtualSize: SIZE, basePoint: points['vm-b'].pointId, slots: [0], digests: digest }));
    expect((await f.repo.getSession(mine.session.sessionId)).disks).toEqual({});

    // The other job's own grant still works, and the server commits what it uploaded.
    await ingestDisk({ reader: bufferDiskReader(disks['vm-b']), storage: other.agent, sessionId: other.session.sessionId, diskId: 'disk0', chunkSize: CHUNK, slots: allSlots(SIZE, CHUNK) });
    points['vm-b'] = await f.admin.commitPoint(other.session.sessionId, { kind: 'express-full', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'b.vhdx', virtualSize: SIZE }] });
    // Once its session is over, the grant is worth nothing.
    const ended = await refused(other.agent.putChunk(sha(planted), planted));
    expect(ended.message).toMatch(/has ended/);
    await f.admin.abortSession(mine.session.sessionId);
    await refused(mine.agent.missingChunks([sha(planted)]));
    await everythingRestores();
  });
});

describe("a restore job's grant", () => {
  it("reads its own point only: manifest, index, raw bytes and the chunks it names; nothing once the lease ends", async () => {
    const older = points['vm-a'];
    disks['vm-a'] = makeDisk(SIZE, 3);
    points['vm-a'] = await backup('vm-a', disks['vm-a'], older.pointId);
    const a = points['vm-a'];
    const lease = await f.repo.beginRestore('vm-a', a.pointId);
    const reader = f.agent.withGrant(f.grants.forRestore({ job: 'restore-a', dataSource: 'vm-a', pointId: a.pointId, leaseId: lease.leaseId, expiresAt: lease.expiresAt }));

    expect((await reader.getPoint(a)).pointId).toBe(a.pointId);
    expect((await reader.getIndex(a, 'disk0')).virtualSize).toBe(SIZE);
    expect((await readAll(await reader.openDiskStream(a, 'disk0'))).equals(disks['vm-a'])).toBe(true);
    const chunks = (d: Buffer) => Array.from({ length: SIZE / CHUNK }, (_, i) => d.subarray(i * CHUNK, (i + 1) * CHUNK)).filter((c) => c.some((x) => x !== 0));
    const ownDigests = new Set(chunks(disks['vm-a']).map(sha));
    const own = chunks(disks['vm-a'])[0];
    expect((await reader.getChunk(sha(own))).equals(own)).toBe(true);
    // A chunk only vm-b's point names (vm-b's disk is another seed): refused; so is vm-b's point.
    const theirs = chunks(disks['vm-b']).find((c) => !ownDigests.has(sha(c)))!;
    expect(theirs).toBeDefined();
    expect((await refused(reader.getChunk(sha(theirs)))).message).toMatch(/is not part of vm-a\//);
    await refused(reader.getPoint(points['vm-b']));
    await refused(reader.openDiskStream(points['vm-b'], 'disk0'));
    // vm-a's older point is another point.
    await refused(reader.getIndex(older, 'disk0'));
    // A read grant uploads nothing.
    await refused(reader.putChunk(sha(Buffer.from('x')), Buffer.from('x')));
    await f.repo.endRestore(lease.leaseId);
    // The liveness of a lease is trusted for a few seconds at most.
    await new Promise((r) => setTimeout(r, 5_100));
    expect((await refused(reader.getPoint(a))).message).toMatch(/restore lease .* has ended/);
  });
});

describe('grants that were not issued by this server', () => {
  it('a tampered, foreign or expired grant is refused', async () => {
    const job = await f.backupJob('vm-a', { chunkSize: CHUNK }, { disk0: SIZE });
    const [body, mac] = job.grant.slice(4).split('.');
    const claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Record<string, unknown>;
    const tampered = `hvg_${Buffer.from(JSON.stringify({ ...claims, disks: { disk0: 64 * 1024 ** 4 } })).toString('base64url')}.${mac}`;
    const agentWith = (g: string) => new StorageClient(f.api.url, f.agentToken).withGrant(g);
    expect((await refused(agentWith(tampered).putChunk(sha(Buffer.from('y')), Buffer.from('y')))).message).toMatch(/did not issue/);
    const foreign = GrantAuthority.ephemeral().forSession({ job: 'x', dataSource: 'vm-a', sessionId: job.session.sessionId, disks: [{ diskId: 'disk0', virtualSize: SIZE }] });
    expect((await refused(agentWith(foreign).missingChunks([sha(Buffer.from('y'))]))).message).toMatch(/did not issue/);
    const expired = f.grants.forSession({ job: 'x', dataSource: 'vm-a', sessionId: job.session.sessionId, disks: [{ diskId: 'disk0', virtualSize: SIZE }], ttlMs: -1 });
    expect((await refused(agentWith(expired).missingChunks([sha(Buffer.from('y'))]))).message).toMatch(/expired/);
    // A grant without the agent token is nothing either.
    expect((await refused(new StorageClient(f.api.url, 'hvp_stolen-grant-only').withGrant(job.grant).missingChunks([sha(Buffer.from('y'))]), 401)).code).toBe('UNAUTHENTICATED');
    await f.admin.abortSession(job.session.sessionId);
    await everythingRestores();
  });
});
