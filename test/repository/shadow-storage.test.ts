import { promises as fs } from 'node:fs';
import { RepositoryError, parseShadowStorageSize, verifyRepository } from '../../repository';
import type { Repository } from '../../repository';
import { backup, randomDisk, restore, tempRepo } from './support';

const CS = 64 * 1024;
const MiB = 1024 * 1024;

describe('parseShadowStorageSize', () => {
  it('reads the vssadmin forms', () => {
    expect(parseShadowStorageSize('UNBOUNDED')).toEqual({ kind: 'unbounded' });
    expect(parseShadowStorageSize('unbounded')).toEqual({ kind: 'unbounded' });
    expect(parseShadowStorageSize('20GB')).toEqual({ kind: 'bytes', bytes: 20 * 1024 ** 3 });
    expect(parseShadowStorageSize('1.5TB')).toEqual({ kind: 'bytes', bytes: 1.5 * 1024 ** 4 });
    expect(parseShadowStorageSize('900MB')).toEqual({ kind: 'bytes', bytes: 900 * MiB });
    expect(parseShadowStorageSize('15%')).toEqual({ kind: 'percent', percent: 15 });
    expect(parseShadowStorageSize('1073741824')).toEqual({ kind: 'bytes', bytes: 1073741824 });
  });
  it('refuses anything else with the accepted forms in the message', () => {
    for (const bad of ['', 'lots', '20 parsecs', '0%', '101%', '-5GB', '12QB', '100']) {
      expect(() => parseShadowStorageSize(bad)).toThrow(RepositoryError);
      try {
        parseShadowStorageSize(bad);
      } catch (err) {
        expect((err as RepositoryError).hint).toMatch(/UNBOUNDED/);
        expect((err as RepositoryError).hint).toMatch(/15%/);
        expect((err as RepositoryError).hint).toMatch(/20GB/);
      }
    }
  });
});

describe('shadow storage and retention', () => {
  let repo: Repository;
  beforeEach(async () => {
    repo = await tempRepo({ volumeBytes: async () => 100 * MiB });
  });
  afterEach(async () => {
    await repo.close();
    await fs.rm(repo.root, { recursive: true, force: true });
  });

  /** Points whose every slot changes: each owns ~disk size (random data does not compress). */
  async function chain(ds: string, n: number, size = 8 * CS): Promise<string[]> {
    const ids: string[] = [];
    let base: string | undefined;
    for (let i = 0; i < n; i++) {
      const m = await backup(repo, ds, randomDisk(size, 100 + i * 13 + ds.length), { base });
      ids.push(m.pointId);
      base = m.pointId;
    }
    return ids;
  }

  it('add without a size is UNBOUNDED; add twice is refused; list shows used, allocated, maximum', async () => {
    await chain('vm', 2);
    const u = await repo.addShadowStorage('vm');
    expect(u.maxSize).toBe('UNBOUNDED');
    expect(u.maximumBytes).toBeNull();
    expect(u.usedBytes).toBeGreaterThan(0);
    expect(u.allocatedBytes).toBe(u.usedBytes);
    await expect(repo.addShadowStorage('vm', '1GB')).rejects.toMatchObject({ code: 'CONFLICT' });
    const s = await repo.beginSession('vm');
    const chunk = randomDisk(CS, 5);
    const { createHash } = await import('node:crypto');
    const d = createHash('sha256').update(chunk).digest();
    await repo.chunks.insert(d.toString('hex'), chunk);
    await repo.patchIndex(s.sessionId, 'disk0', { virtualSize: CS }, [0], d);
    const [listed] = await repo.listShadowStorage('vm');
    expect(listed.allocatedBytes).toBeGreaterThan(listed.usedBytes);
    const pct = await repo.resizeShadowStorage('vm', { maxSize: '50%' });
    expect(pct.maximumBytes).toBe(50 * MiB);
  });

  it('resize evicts oldest first, never the newest, and logs each deletion', async () => {
    const ids = await chain('vm', 5);
    const before = await repo.usage('vm');
    const perPoint = before.usedBytes / 5;
    const r = await repo.resizeShadowStorage('vm', { maxSize: `${Math.ceil(perPoint * 2.5)}` === '0' ? '1MB' : `${Math.max(MiB, Math.ceil(perPoint * 2.5))}` });
    const left = (await repo.listPoints('vm')).map((p) => p.pointId);
    expect(left[left.length - 1]).toBe(ids[4]);
    expect(r.deleted.map((d) => d.pointId)).toEqual(ids.slice(0, r.deleted.length));
    expect(left).toEqual(ids.slice(r.deleted.length));
    const log = await repo.readDeletionLog();
    expect(log.map((d) => d.pointId)).toEqual(r.deleted.map((d) => d.pointId));
    expect(log.every((d) => d.reason === 'shadow-storage-resize')).toBe(true);
    expect(r.usedBytes).toBeLessThanOrEqual(r.maximumBytes!);
    for (const id of left) expect((await restore(repo, 'vm', id)).length).toBe(8 * CS);
    expect((await verifyRepository(repo)).ok).toBe(true);
  });

  it('a commit that does not fit deletes the oldest points first, skipping one being restored', async () => {
    const ids = await chain('vm', 4, 16 * CS);
    const used = (await repo.usage('vm')).usedBytes;
    // Room for four and a half points: each new point makes one old one go.
    await repo.resizeShadowStorage('vm', { maxSize: String(Math.floor(used + used / 8)) });
    const lease = await repo.beginRestore('vm', ids[0]);
    // Two more points of ~1 MiB: the oldest not being restored (ids[1], then ids[2]) go.
    const m5 = await backup(repo, 'vm', randomDisk(16 * CS, 999), { base: ids[3] });
    const m6 = await backup(repo, 'vm', randomDisk(16 * CS, 998), { base: m5.pointId });
    const left = (await repo.listPoints('vm')).map((p) => p.pointId);
    expect(left).toContain(ids[0]);
    expect(left).not.toContain(ids[1]);
    expect(left[left.length - 1]).toBe(m6.pointId);
    const log = await repo.readDeletionLog();
    expect(log[0]).toMatchObject({ pointId: ids[1], reason: 'shadow-storage-full' });
    await repo.endRestore(lease.leaseId);
    await repo.deleteOldestPoint('vm');
    expect((await repo.listPoints('vm'))[0].pointId).not.toBe(ids[0]);
  });

  it('fails clearly, deleting nothing, when the point cannot fit at all', async () => {
    const ids = await chain('vm', 2, 16 * CS);
    await repo.resizeShadowStorage('vm', { maxSize: '1MB' }).catch(() => undefined);
    const before = (await repo.listPoints('vm')).map((p) => p.pointId);
    let err: RepositoryError | undefined;
    try {
      await backup(repo, 'vm', randomDisk(32 * CS, 4242), { base: ids[1] });
    } catch (e) {
      err = e as RepositoryError;
    }
    expect(err?.code).toBe('SHADOW_STORAGE_FULL');
    expect(err?.message).toMatch(/needs \d+ bytes; shadow storage maximum is \d+ bytes/);
    expect(err?.hint).toMatch(/resize/);
    expect((await repo.listPoints('vm')).map((p) => p.pointId)).toEqual(before);
  });

  it('a point being streamed by a restore is kept; once the stream is closed it can go', async () => {
    const ids = await chain('vm', 3);
    const { openDiskStream } = await import('../../recovery');
    const { stream } = await openDiskStream(repo, 'vm', ids[0], 'disk0');
    const d = await repo.deleteOldestPoint('vm');
    expect(d.pointId).toBe(ids[1]);
    stream.destroy(); // closed before a byte was read
    await new Promise((r) => setImmediate(r));
    const d2 = await repo.deleteOldestPoint('vm');
    expect(d2.pointId).toBe(ids[0]);
  });

  it('never deletes the newest point nor the base of a backup in progress', async () => {
    const ids = await chain('vm', 2);
    await expect(repo.deletePoint('vm', ids[1])).rejects.toMatchObject({ code: 'CONFLICT' });
    await repo.beginSession('vm', { basePoint: ids[0] });
    await expect(repo.deleteOldestPoint('vm')).rejects.toMatchObject({ code: 'CONFLICT' });
  });

  it('max points (1..448) and retention range in days', async () => {
    await expect(repo.resizeShadowStorage('vm', { maxPoints: 449 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await chain('vm', 1);
    await expect(repo.resizeShadowStorage('vm', { maxPoints: 449 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(repo.resizeShadowStorage('vm', { maxPoints: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await fs.rm(repo.root + '/deletions.log', { force: true });
    // points 40, 20 and 10 days old, then today
    const day = 86_400_000;
    const old: string[] = [];
    let base = (await repo.listPoints('vm'))[0].pointId;
    await repo.deletePoint('vm', base).catch(() => undefined);
    for (const age of [40, 20, 10]) {
      const m = await backup(repo, 'vm2', randomDisk(4 * CS, age), { createdAt: new Date(Date.now() - age * day).toISOString() });
      old.push(m.pointId);
    }
    const today = await backup(repo, 'vm2', randomDisk(4 * CS, 1), { base: old[2] });
    base = today.pointId;
    const r = await repo.resizeShadowStorage('vm2', { retentionRangeDays: 14 });
    expect(r.deleted.map((d) => d.pointId)).toEqual(old.slice(0, 2));
    expect(r.deleted.every((d) => d.reason === 'retention-range')).toBe(true);
    const r2 = await repo.resizeShadowStorage('vm2', { maxPoints: 1 });
    expect(r2.deleted.map((d) => d.pointId)).toEqual([old[2]]);
    expect((await repo.listPoints('vm2')).map((p) => p.pointId)).toEqual([base]);
    // the next commit keeps the count: the previous newest goes
    const next = await backup(repo, 'vm2', randomDisk(4 * CS, 2), { base });
    expect((await repo.listPoints('vm2')).map((p) => p.pointId)).toEqual([next.pointId]);
  });

  it('used bytes follow ownership: deleting the oldest moves its still-used chunks to the next point', async () => {
    const disk = randomDisk(16 * CS, 77);
    const m1 = await backup(repo, 'vm', disk);
    disk.fill(1, 0, 100);
    const m2 = await backup(repo, 'vm', disk, { base: m1.pointId, changedSlots: [0] });
    const before = await repo.usage('vm');
    const d = await repo.deleteOldestPoint('vm');
    const after = await repo.usage('vm');
    expect(d.freedBytes).toBeLessThan(before.usedBytes / 4); // only slot 0's old chunk and the index
    expect(after.usedBytes).toBe(before.usedBytes - d.freedBytes);
    expect((await restore(repo, 'vm', m2.pointId)).equals(disk)).toBe(true);
  });
});
