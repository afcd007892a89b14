// The management calls the CLI makes, end to end through the client.
import { allSlots, bufferDiskReader, ingestDisk } from '../../ingest';
import { makeDisk, startFixture, type Fixture } from './support';

const CHUNK = 64 * 1024;

describe('storage API management calls', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await startFixture({ volumeBytes: async () => 1024 * 1024 * 1024 });
  });
  afterAll(async () => f.close());

  async function point(ds: string, seed: number, base?: string): Promise<string> {
    const size = 24 * CHUNK;
    const disk = makeDisk(size, seed);
    const { session: s, agent } = await f.backupJob(ds, { chunkSize: CHUNK, basePoint: base });
    await ingestDisk({ reader: bufferDiskReader(disk), storage: agent, sessionId: s.sessionId, diskId: 'd', chunkSize: CHUNK, slots: allSlots(size, CHUNK) });
    return (await f.admin.commitPoint(s.sessionId, { kind: base ? 'express-full' : 'initial-replica', mode: 'online', disks: [{ diskId: 'd', fileName: 'd.vhdx', virtualSize: size }] })).pointId;
  }

  it('shadow storage add / list / resize / delete oldest, retention, deletions, GC and verify', async () => {
    const p1 = await point('vm-admin', 1);
    const p2 = await point('vm-admin', 2, p1);
    const p3 = await point('vm-admin', 3, p2);
    const added = await f.admin.addShadowStorage('vm-admin', '10%');
    expect(added).toMatchObject({ maxSize: '10%', maximumBytes: Math.floor((1024 * 1024 * 1024) / 10), points: 3 });
    const [listed] = await f.admin.listShadowStorage('vm-admin');
    expect(listed.usedBytes).toBeGreaterThan(0);
    const bad = await f.admin.resizeShadowStorage('vm-admin', { maxSize: 'twenty gigs' }).catch((e: Error) => e);
    expect(bad).toMatchObject({ status: 400, code: 'INVALID_ARGUMENT' });
    expect((bad as Error).message).toMatch(/UNBOUNDED/);
    const oldest = await f.admin.deleteOldestPoint('vm-admin');
    expect(oldest.pointId).toBe(p1);
    const resized = await f.admin.resizeShadowStorage('vm-admin', { maxPoints: 1 });
    expect(resized.deleted.map((d) => d.pointId)).toEqual([p2]);
    expect((await f.admin.listPoints('vm-admin')).map((p) => p.pointId)).toEqual([p3]);
    expect(await f.admin.enforceRetention('vm-admin')).toEqual([]);
    expect((await f.admin.deletions()).map((d) => [d.pointId, d.reason])).toEqual([[p1, 'delete-oldest'], [p2, 'max-points']]);
    const gc = await f.admin.collectGarbage();
    expect(gc.passes).toBeGreaterThanOrEqual(1);
    const v = await f.admin.verify({ readData: true });
    expect(v.ok).toBe(true);
    expect(v.points).toBe(1);
  });

  it('restore leases keep a point through eviction', async () => {
    const a = await point('vm-lease', 11);
    const b = await point('vm-lease', 12, a);
    const lease = await f.admin.beginRestore({ dataSource: 'vm-lease', pointId: a });
    await expect(f.admin.deleteOldestPoint('vm-lease')).rejects.toMatchObject({ status: 409 });
    await f.admin.endRestore(lease.leaseId);
    expect((await f.admin.deleteOldestPoint('vm-lease')).pointId).toBe(a);
    expect((await f.admin.listPoints('vm-lease')).map((p) => p.pointId)).toEqual([b]);
  });
});
