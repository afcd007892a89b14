import { verifyRepository } from '../../repository';
import { ingestDisk } from '../../storage-api';
import { makeDisk, readAll, startFixture, type Fixture } from './support';

const CHUNK = 64 * 1024;

describe('ingest through the storage API', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await startFixture();
  });
  afterAll(async () => f.close());

  it('ingests a full disk, then an incremental from known changed ranges, both restore bit for bit', async () => {
    const size = 5 * CHUNK * 7 + 12345; // not a multiple of the chunk size
    const disk = makeDisk(size, 7);
    const s1 = await f.agent.beginSession('vm-web01', { chunkSize: CHUNK });
    expect(s1.chunkSize).toBe(CHUNK);
    const positions: number[] = [];
    const p1 = await ingestDisk({
      client: f.agent, sessionId: s1.sessionId, diskId: 'disk0', virtualSize: size, chunkSize: CHUNK,
      read: async (o, l) => disk.subarray(o, o + l), batchBytes: 4 * CHUNK, onProgress: (p) => positions.push(p.position),
    });
    expect(p1.position).toBe(size);
    expect(positions).toEqual([...positions].sort((a, b) => a - b));
    const m1 = await f.agent.commitPoint(s1.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'web01.vhdx', virtualSize: size }], vm: { name: 'web01' } });
    expect(m1.disks[0].totalChunks).toBe(Math.ceil(size / CHUNK));

    const disk2 = Buffer.from(disk);
    const ranges = [{ offset: 3 * CHUNK + 100, length: 5000 }, { offset: size - 10, length: 10 }];
    for (const r of ranges) disk2.fill(0xab, r.offset, r.offset + r.length);
    const s2 = await f.agent.beginSession('vm-web01', { basePoint: m1.pointId });
    const p2 = await ingestDisk({ client: f.agent, sessionId: s2.sessionId, diskId: 'disk0', virtualSize: size, chunkSize: CHUNK, read: async (o, l) => disk2.subarray(o, o + l), changedRanges: ranges });
    expect(p2.slotsTotal).toBe(2);
    const m2 = await f.agent.commitPoint(s2.sessionId, { kind: 'express-full', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'web01.vhdx', virtualSize: size }] });
    expect(m2.disks[0].changedChunks).toBe(2);
    expect(m2.basePoint).toBe(m1.pointId);

    expect((await readAll(await f.agent.openDiskStream(m1, 'disk0'))).equals(disk)).toBe(true);
    expect((await readAll(await f.agent.openDiskStream(m2, 'disk0'))).equals(disk2)).toBe(true);
    const part = await readAll(await f.agent.openDiskStream(m2, 'disk0', { offset: 3 * CHUNK - 7, length: CHUNK + 20 }));
    expect(part.equals(disk2.subarray(3 * CHUNK - 7, 4 * CHUNK + 13))).toBe(true);

    const idx = await f.agent.getIndex(m2, 'disk0');
    expect(idx.count).toBe(m2.disks[0].totalChunks);
    expect(idx.checksum).toBe(m2.disks[0].indexDigest);
    expect((await f.agent.listPoints('vm-web01')).map((p) => p.pointId)).toEqual([m1.pointId, m2.pointId]);
    const report = await verifyRepository(f.repo, { readData: true });
    expect(report.ok).toBe(true);
  });

  it('resumes an interrupted ingest from its last reported position', async () => {
    const size = 40 * CHUNK;
    const disk = makeDisk(size, 11);
    const s = await f.agent.beginSession('vm-resume', { chunkSize: CHUNK });
    const abort = new AbortController();
    let last = 0;
    let reads = 0;
    await expect(
      ingestDisk({
        client: f.agent, sessionId: s.sessionId, diskId: 'disk0', virtualSize: size, chunkSize: CHUNK, batchBytes: 4 * CHUNK, batchesInFlight: 1,
        read: async (o, l) => {
          if (++reads === 5) abort.abort(new Error('agent lost its host'));
          return disk.subarray(o, o + l);
        },
        signal: abort.signal,
        onProgress: (p) => (last = p.position),
      }),
    ).rejects.toThrow();
    expect(last).toBeGreaterThan(0);
    expect(last).toBeLessThan(size);
    const readOffsets: number[] = [];
    const p = await ingestDisk({
      client: f.agent, sessionId: s.sessionId, diskId: 'disk0', virtualSize: size, chunkSize: CHUNK, resumeFrom: last,
      read: async (o, l) => {
        readOffsets.push(o);
        return disk.subarray(o, o + l);
      },
    });
    expect(Math.min(...readOffsets)).toBe(last);
    expect(p.position).toBe(size);
    const m = await f.agent.commitPoint(s.sessionId, { kind: 'initial-replica', mode: 'offline', disks: [{ diskId: 'disk0', fileName: 'r.vhdx', virtualSize: size }] });
    expect((await readAll(await f.agent.openDiskStream(m, 'disk0'))).equals(disk)).toBe(true);
  });

  it('a consistency check (whole disk against a base) counts only what differs', async () => {
    const size = 16 * CHUNK;
    const disk = makeDisk(size, 21);
    const s1 = await f.agent.beginSession('vm-cc', { chunkSize: CHUNK });
    await ingestDisk({ client: f.agent, sessionId: s1.sessionId, diskId: 'd', virtualSize: size, chunkSize: CHUNK, read: async (o, l) => disk.subarray(o, o + l) });
    const m1 = await f.agent.commitPoint(s1.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'd', fileName: 'd.vhdx', virtualSize: size }] });
    disk.fill(0x5a, 3 * CHUNK, 3 * CHUNK + 10);
    let z = 4;
    while (disk.subarray(z * CHUNK, (z + 1) * CHUNK).every((b) => b === 0)) z++;
    disk.fill(0x00, z * CHUNK, (z + 1) * CHUNK); // a chunk zeroed out: changed, nothing to send
    const s2 = await f.agent.beginSession('vm-cc', { basePoint: m1.pointId });
    const p = await ingestDisk({ client: f.agent, sessionId: s2.sessionId, diskId: 'd', virtualSize: size, chunkSize: CHUNK, read: async (o, l) => disk.subarray(o, o + l) });
    expect(p.chunksSent).toBe(1);
    const m2 = await f.agent.commitPoint(s2.sessionId, { kind: 'consistency-check', mode: 'online', disks: [{ diskId: 'd', fileName: 'd.vhdx', virtualSize: size }] });
    expect(m2.disks[0].changedChunks).toBe(2);
    expect((await readAll(await f.agent.openDiskStream(m2, 'd'))).equals(disk)).toBe(true);
  });
});
