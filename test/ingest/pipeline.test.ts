// The one backup data path (ingest/) through a real storage API: full, incremental from changed
// ranges, resumed after a failure from its reported position, and a consistency check against a
// base index; every point restores bit for bit.
import { verifyRepository } from '../../repository';
import { BatchMemory, allSlots, bufferDiskReader, ingestDisk, pool, slotsOfRanges, type IngestPosition } from '../../ingest';
import type { DiskReader } from '../../hypervisor/types';
import { makeDisk, readAll, startFixture, type Fixture } from '../storage-api/support';

const CHUNK = 64 * 1024;

describe('ingestDisk through the storage API', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await startFixture();
  });
  afterAll(async () => f.close());

  it('ingests a full disk, then an incremental from known changed ranges, both restore bit for bit', async () => {
    const size = 5 * CHUNK * 7 + 12345; // not a multiple of the chunk size
    const disk = makeDisk(size, 7);
    const { session: s1, agent: s1Agent } = await f.backupJob('vm-web01', { chunkSize: CHUNK });
    expect(s1.chunkSize).toBe(CHUNK);
    const offsets: number[] = [];
    const p1 = await ingestDisk({
      reader: bufferDiskReader(disk), storage: s1Agent, sessionId: s1.sessionId, diskId: 'disk0', chunkSize: CHUNK, slots: allSlots(size, CHUNK),
      tuning: { batchBytes: 4 * CHUNK }, onProgress: (_p, offset) => void offsets.push(offset),
    });
    expect(p1.nextSlot).toBe(Math.ceil(size / CHUNK));
    expect(offsets).toEqual([...offsets].sort((a, b) => a - b));
    expect(offsets[offsets.length - 1]).toBe(size);
    const m1 = await f.admin.commitPoint(s1.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'web01.vhdx', virtualSize: size }], vm: { name: 'web01' } });
    expect(m1.disks[0].totalChunks).toBe(Math.ceil(size / CHUNK));

    const disk2 = Buffer.from(disk);
    const ranges = [{ offset: 3 * CHUNK + 100, length: 5000 }, { offset: size - 10, length: 10 }];
    for (const r of ranges) disk2.fill(0xab, r.offset, r.offset + r.length);
    const { session: s2, agent: s2Agent } = await f.backupJob('vm-web01', { basePoint: m1.pointId });
    const p2 = await ingestDisk({ reader: bufferDiskReader(disk2), storage: s2Agent, sessionId: s2.sessionId, diskId: 'disk0', chunkSize: CHUNK, slots: slotsOfRanges(ranges, CHUNK, size) });
    expect(p2.nextSlot).toBe(2);
    expect(p2.bytesRead).toBe(CHUNK + (size % CHUNK));
    const m2 = await f.admin.commitPoint(s2.sessionId, { kind: 'express-full', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'web01.vhdx', virtualSize: size }] });
    expect(m2.disks[0].changedChunks).toBe(2);
    expect(m2.basePoint).toBe(m1.pointId);

    expect((await readAll(await f.admin.openDiskStream(m1, 'disk0'))).equals(disk)).toBe(true);
    expect((await readAll(await f.admin.openDiskStream(m2, 'disk0'))).equals(disk2)).toBe(true);
    const idx = await f.admin.getIndex(m2, 'disk0');
    expect(idx.checksum).toBe(m2.disks[0].indexDigest);
    expect((await verifyRepository(f.repo, { readData: true })).ok).toBe(true);
  });

  it('reads into a few reused buffers (readInto) and still stores every batch as it was read', async () => {
    // 24 batches through at most batchesInFlight + 1 buffers: a buffer handed back before its
    // batch's uploads ended would be overwritten by a later read, and the point would not restore.
    const size = 96 * CHUNK + 777;
    const disk = makeDisk(size, 23);
    const { session: s, agent } = await f.backupJob('vm-reuse', { chunkSize: CHUNK });
    const memories = new Set<ArrayBufferLike>();
    let reads = 0;
    const reader: DiskReader = {
      ...bufferDiskReader(disk),
      read: async () => {
        throw new Error('read() called although readInto() exists');
      },
      readInto: async (target, offset) => {
        memories.add(target.buffer);
        reads++;
        await new Promise((r) => setTimeout(r, reads % 3)); // reads end out of order
        disk.copy(target, 0, offset, offset + target.length);
      },
    };
    const p = await ingestDisk({
      reader, storage: agent, sessionId: s.sessionId, diskId: 'disk0', chunkSize: CHUNK, slots: allSlots(size, CHUNK),
      tuning: { batchBytes: 4 * CHUNK, batchesInFlight: 2, uploadBytes: CHUNK, uploadConcurrency: 3 },
    });
    expect(p.bytesRead).toBe(size);
    expect(memories.size).toBeLessThanOrEqual(3);
    const m = await f.admin.commitPoint(s.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'reuse.vhdx', virtualSize: size }] });
    expect((await readAll(await f.admin.openDiskStream(m, 'disk0'))).equals(disk)).toBe(true);
  });

  it('keeps batch memory for the next transfer, never lends a buffer to two at once, and lets it go when idle', async () => {
    // A long-lived agent: fresh batch buffers per transfer were new external memory each time (and
    // set off full collections). Two transfers at once, then a third: the third makes no buffer,
    // the two at once never share one, and every point restores bit for bit.
    // Lent buffers are tracked: one handed out while lent (to this transfer or another) is a failure.
    const lent = new Set<ArrayBufferLike>();
    const memory = new (class extends BatchMemory {
      override take(size: number): Buffer {
        const b = super.take(size);
        if (lent.has(b.buffer)) throw new Error('a buffer still lent was handed out again');
        lent.add(b.buffer);
        return b;
      }
      override give(b: Buffer): void {
        lent.delete(b.buffer);
        super.give(b);
      }
    })(64 * CHUNK, 60_000);
    const sizes = [48 * CHUNK + 5, 40 * CHUNK];
    const disks = sizes.map((size, i) => makeDisk(size, 31 + i));
    const tuning = { batchBytes: 4 * CHUNK, batchesInFlight: 2, uploadBytes: CHUNK, uploadConcurrency: 2 };
    const run = async (name: string, disk: Buffer) => {
      const { session: s, agent } = await f.backupJob(`vm-${name}`, { chunkSize: CHUNK });
      const reader: DiskReader = {
        ...bufferDiskReader(disk),
        readInto: async (target, offset) => {
          await new Promise((r) => setTimeout(r, 1));
          disk.copy(target, 0, offset, offset + target.length);
        },
      };
      await ingestDisk({ reader, storage: agent, sessionId: s.sessionId, diskId: 'disk0', chunkSize: CHUNK, slots: allSlots(disk.length, CHUNK), tuning, batchMemory: memory });
      const m = await f.admin.commitPoint(s.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'disk0', fileName: `${name}.vhdx`, virtualSize: disk.length }] });
      expect((await readAll(await f.admin.openDiskStream(m, 'disk0'))).equals(disk)).toBe(true);
    };
    await Promise.all([run('first', disks[0]), run('second', disks[1])]);
    expect(lent.size).toBe(0); // every buffer given back once its transfer returned
    const made = memory.made;
    expect(made).toBeGreaterThan(0);
    expect(made).toBeLessThanOrEqual(2 * (tuning.batchesInFlight + 1));
    expect(memory.held).toBeGreaterThan(0);
    await run('third', makeDisk(36 * CHUNK, 33));
    expect(memory.made).toBe(made); // the third transfer made none
    expect(memory.reused).toBeGreaterThan(0);
    expect(memory.held).toBeLessThanOrEqual(64 * CHUNK);
    memory.drop();
    // Idle for its idleMs, a pool lets its buffers go; beyond its cap it keeps none.
    const short = new BatchMemory(2 * CHUNK, 50);
    short.give(short.take(CHUNK));
    short.give(short.take(CHUNK));
    short.give(Buffer.allocUnsafeSlow(CHUNK));
    short.give(Buffer.allocUnsafeSlow(CHUNK)); // past the cap of 2 chunks: not kept
    expect(short.held).toBe(2 * CHUNK);
    await new Promise((r) => setTimeout(r, 150));
    expect(short.held).toBe(0);
  });

  it('resumes an interrupted ingest from its last reported position', async () => {
    const size = 40 * CHUNK;
    const disk = makeDisk(size, 11);
    const { session: s, agent: sAgent } = await f.backupJob('vm-resume', { chunkSize: CHUNK });
    let last: IngestPosition | undefined;
    let lastOffset = 0;
    let reads = 0;
    const failing: DiskReader = { ...bufferDiskReader(disk), read: async (o, l) => {
      if (++reads === 5) throw new Error('agent lost its host');
      return disk.subarray(o, o + l);
    } };
    await expect(ingestDisk({
      reader: failing, storage: sAgent, sessionId: s.sessionId, diskId: 'disk0', chunkSize: CHUNK, slots: allSlots(size, CHUNK),
      tuning: { batchBytes: 4 * CHUNK, batchesInFlight: 1 },
      onProgress: (p, offset) => {
        last = p;
        lastOffset = offset;
      },
    })).rejects.toThrow(/lost its host/);
    expect(lastOffset).toBeGreaterThan(0);
    expect(lastOffset).toBeLessThan(size);
    const readOffsets: number[] = [];
    const p = await ingestDisk({
      reader: { ...bufferDiskReader(disk), read: async (o, l) => {
        readOffsets.push(o);
        return disk.subarray(o, o + l);
      } },
      storage: sAgent, sessionId: s.sessionId, diskId: 'disk0', chunkSize: CHUNK, slots: allSlots(size, CHUNK), resume: last,
    });
    expect(Math.min(...readOffsets)).toBe(lastOffset);
    expect(p.nextSlot).toBe(40);
    expect(p.bytesRead).toBe(size);
    const m = await f.admin.commitPoint(s.sessionId, { kind: 'initial-replica', mode: 'offline', disks: [{ diskId: 'disk0', fileName: 'r.vhdx', virtualSize: size }] });
    expect((await readAll(await f.admin.openDiskStream(m, 'disk0'))).equals(disk)).toBe(true);
  });

  it('a consistency check writes only the slots that differ from the base and sends only what is missing', async () => {
    const size = 16 * CHUNK;
    const disk = makeDisk(size, 21);
    const { session: s1, agent: s1Agent } = await f.backupJob('vm-cc', { chunkSize: CHUNK });
    await ingestDisk({ reader: bufferDiskReader(disk), storage: s1Agent, sessionId: s1.sessionId, diskId: 'd', chunkSize: CHUNK, slots: allSlots(size, CHUNK) });
    const m1 = await f.admin.commitPoint(s1.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'd', fileName: 'd.vhdx', virtualSize: size }] });
    disk.fill(0x5a, 3 * CHUNK, 3 * CHUNK + 10);
    let z = 4;
    while (disk.subarray(z * CHUNK, (z + 1) * CHUNK).every((b) => b === 0)) z++;
    disk.fill(0x00, z * CHUNK, (z + 1) * CHUNK); // a chunk zeroed out: changed, nothing to send
    const { session: s2, agent: s2Agent } = await f.backupJob('vm-cc', { basePoint: m1.pointId });
    const base = await s2Agent.getIndex(m1, 'd'); // the base point's index: a backup grant reads it
    const p = await ingestDisk({ reader: bufferDiskReader(disk), storage: s2Agent, sessionId: s2.sessionId, diskId: 'd', chunkSize: CHUNK, slots: allSlots(size, CHUNK), basePoint: m1.pointId, baseSlots: base.slots });
    expect(p.chunksSent).toBe(1);
    expect(p.changedChunks).toBe(2);
    const m2 = await f.admin.commitPoint(s2.sessionId, { kind: 'consistency-check', mode: 'online', disks: [{ diskId: 'd', fileName: 'd.vhdx', virtualSize: size }] });
    expect(m2.disks[0].changedChunks).toBe(2);
    expect((await readAll(await f.admin.openDiskStream(m2, 'd'))).equals(disk)).toBe(true);
  });

  it('an express full with no change still leaves the disk in the point', async () => {
    const size = 8 * CHUNK;
    const disk = makeDisk(size, 5);
    const { session: s1, agent: s1Agent } = await f.backupJob('vm-still', { chunkSize: CHUNK });
    await ingestDisk({ reader: bufferDiskReader(disk), storage: s1Agent, sessionId: s1.sessionId, diskId: 'd', chunkSize: CHUNK, slots: allSlots(size, CHUNK) });
    const m1 = await f.admin.commitPoint(s1.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'd', fileName: 'd.vhdx', virtualSize: size }] });
    const { session: empty, agent: emptyAgent } = await f.backupJob('vm-empty', { chunkSize: CHUNK });
    const p = await ingestDisk({ reader: bufferDiskReader(Buffer.alloc(size)), storage: emptyAgent, sessionId: empty.sessionId, diskId: 'd', chunkSize: CHUNK, slots: [], basePoint: null });
    expect(p.changedChunks).toBe(0);
    const me = await f.admin.commitPoint(empty.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'd', fileName: 'd.vhdx', virtualSize: size }] });
    expect((await readAll(await f.admin.openDiskStream(me, 'd'))).equals(Buffer.alloc(size))).toBe(true);
    expect(m1.disks[0].totalChunks).toBe(8);
  });
});

describe('pool', () => {
  it('after a failure starts nothing more and returns only once the items in flight have ended', async () => {
    const events: string[] = [];
    const result = pool([0, 1, 2, 3, 4, 5, 6, 7], 3, async (i) => {
      events.push(`start ${i}`);
      await new Promise((r) => setTimeout(r, i === 0 ? 10 : 60));
      events.push(`end ${i}`);
      if (i === 0) throw new Error('read failed');
    });
    await expect(result).rejects.toThrow('read failed');
    events.push('returned');
    // Items 1 and 2 were in flight when 0 failed: they end before pool returns; 3..7 never start.
    expect(events).toEqual(['start 0', 'start 1', 'start 2', 'end 0', 'end 1', 'end 2', 'returned']);
  });
});
