import { promises as fs } from 'node:fs';
import { collectGarbage, verifyRepository } from '../../repository';
import type { Repository } from '../../repository';
import { backup, digestOf, randomDisk, restore, tempRepo } from './support';

const CS = 64 * 1024;

describe('garbage collection', () => {
  let repo: Repository;
  beforeEach(async () => {
    repo = await tempRepo();
  });
  afterEach(async () => {
    await repo.close();
    await fs.rm(repo.root, { recursive: true, force: true });
  });

  async function ageAllChunks(ms: number, of: Repository = repo): Promise<void> {
    const t = new Date(Date.now() - ms);
    for await (const ent of of.chunks.listPrefix(0, 65536)) await fs.utimes(ent.file, t, t);
  }

  it('removes chunks no point references once they are older than the cutoff, in several bounded passes', async () => {
    const a = randomDisk(20 * CS, 1);
    const m1 = await backup(repo, 'vm', a);
    const b = randomDisk(20 * CS, 2);
    const m2 = await backup(repo, 'vm', b, { base: m1.pointId });
    await ageAllChunks(10 * 60_000);
    await repo.deleteOldestPoint('vm');
    const report = await collectGarbage(repo, { memoryBudgetEntries: 4 });
    expect(report.passes).toBeGreaterThan(1);
    expect(report.removedChunks).toBeGreaterThan(0);
    expect((await restore(repo, 'vm', m2.pointId)).equals(b)).toBe(true);
    expect((await verifyRepository(repo, { readData: true })).ok).toBe(true);
    // nothing left to remove
    expect((await collectGarbage(repo)).removedChunks).toBe(0);
  });

  it('spares unreferenced chunks newer than the oldest live backup session, collects them after it ends', async () => {
    const s = await repo.beginSession('vm');
    const chunk = randomDisk(CS, 3);
    const d = digestOf(chunk).toString('hex');
    await repo.chunks.insert(d, chunk);
    await ageAllChunks(10 * 60_000); // even old-looking: the session lease does not protect by mtime alone
    // The session touches it when told it exists (as "missing?" does) -> mtime is now again.
    expect(await repo.chunks.touch(d)).toBeGreaterThan(0);
    let report = await collectGarbage(repo);
    expect(report.removedChunks).toBe(0);
    expect(report.keptRecent).toBe(1);
    await repo.abortSession(s.sessionId);
    await ageAllChunks(10 * 60_000);
    report = await collectGarbage(repo);
    expect(report.removedChunks).toBe(1);
    expect(await repo.chunks.storedSize(d)).toBeUndefined();
  });

  it('concurrent backups and GC: every committed point restores and the repository verifies', async () => {
    const disks = [1, 2, 3, 4].map((i) => randomDisk(24 * CS, 10 + i));
    const bases: Array<string | undefined> = [undefined, undefined, undefined, undefined];
    let stop = false;
    let gcRuns = 0;
    let removed = 0;
    // GC with almost no grace: its cutoff is 20 ms before the start of the oldest live session.
    // Not 0: a file's mtime can read up to ~6 ms earlier than the Date.now() taken before writing
    // it (measured here: 8 of 2,000 writes), so a chunk a session wrote right after it began could
    // look older than the session and be taken (the default grace, 60 s, is this margin).
    const gcLoop = (async () => {
      while (!stop) {
        removed += (await collectGarbage(repo, { graceMs: 20, memoryBudgetEntries: 256 })).removedChunks;
        gcRuns++;
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    const expected: Array<{ ds: string; id: string; image: Buffer }> = [];
    try {
      await Promise.all(
        disks.map(async (disk, i) => {
          for (let gen = 0; gen < 8; gen++) {
            const changed = [gen % 24, (gen * 7 + i) % 24, 23 - gen];
            for (const s of changed) disk.fill((gen * 31 + i) & 0xff, s * CS, s * CS + 500);
            const ds = `vm-${i}`;
            const m = await backup(repo, ds, disk, bases[i] ? { base: bases[i], changedSlots: [...new Set(changed)].sort((a, b) => a - b) } : {});
            bases[i] = m.pointId;
            expected.push({ ds, id: m.pointId, image: Buffer.from(disk) });
            if (gen % 2 === 1) await repo.deleteOldestPoint(ds);
            await new Promise((r) => setTimeout(r, 3 * i));
          }
        }),
      );
    } finally {
      stop = true;
      await gcLoop;
    }
    expect(gcRuns).toBeGreaterThan(0);
    removed += (await collectGarbage(repo, { graceMs: 0 })).removedChunks;
    expect(removed).toBeGreaterThan(0);
    for (const e of expected) {
      const exists = (await repo.listPoints(e.ds)).some((p) => p.pointId === e.id);
      if (exists) expect((await restore(repo, e.ds, e.id)).equals(e.image)).toBe(true);
    }
    const report = await verifyRepository(repo, { readData: true });
    expect(report.damagedChunks).toEqual([]);
    expect(report.ok).toBe(true);
  });

  it('a chunk GC is deleting is reported missing to a concurrent "missing?" check, never present-then-gone', async () => {
    const chunk = randomDisk(CS, 9);
    const d = digestOf(chunk).toString('hex');
    await repo.chunks.insert(d, chunk);
    await ageAllChunks(10 * 60_000);
    const [report, size] = await Promise.all([collectGarbage(repo, { graceMs: 0 }), repo.chunks.touch(d)]);
    const present = size !== undefined;
    const onDisk = (await repo.chunks.storedSize(d)) !== undefined;
    // Either GC removed it and touch said missing, or touch shielded it and it stayed.
    expect(present).toBe(onDisk);
    expect(report.removedChunks + (onDisk ? 1 : 0)).toBe(1);
  });

  it('a chunk a backup touched is shielded from the GC decision that comes right after it, in the same turn', async () => {
    const chunk = randomDisk(CS, 31);
    const d = digestOf(chunk).toString('hex');
    await repo.chunks.insert(d, chunk);
    repo.chunks.beginGc();
    try {
      const touched = repo.chunks.touch(d); // a backup finds the chunk stored...
      const removed = await repo.chunks.removeIfUnused(d); // ...and GC, which had found it unreferenced, decides
      const size = await touched;
      expect(removed).toBe(false);
      expect(size).toBeGreaterThan(0);
      expect(await repo.chunks.storedSize(d)).toBe(size);
    } finally {
      repo.chunks.endGc();
    }
  });

  it('with encoder threads (the storage API\'s path), "missing?" and a batch insert racing GC: the answer matches the disk, and the inserted chunk stays', async () => {
    const threaded = await tempRepo({ encoderThreads: 1 });
    try {
      for (let round = 0; round < 8; round++) {
        const chunk = randomDisk(CS, 20 + round);
        const d = digestOf(chunk).toString('hex');
        await threaded.chunks.insert(d, chunk);
        await ageAllChunks(10 * 60_000, threaded);
        const [report, missing] = await Promise.all([collectGarbage(threaded, { graceMs: 0 }), threaded.chunks.missing([d])]);
        const onDisk = (await threaded.chunks.storedSize(d)) !== undefined;
        // Said present only if it stayed; said missing only if GC took it.
        expect(missing.includes(d)).toBe(!onDisk);
        if (!onDisk) expect(report.removedChunks).toBeGreaterThanOrEqual(1);

        await ageAllChunks(10 * 60_000, threaded);
        const [, results] = await Promise.all([
          collectGarbage(threaded, { graceMs: 0 }),
          threaded.chunks.insertBatch(Buffer.from(chunk), [{ digest: d, offset: 0, length: chunk.length }]),
        ]);
        // However the two interleave, a chunk the insert reported stored is on disk afterwards.
        expect(results[0].storedSize).toBeGreaterThan(0);
        expect(await threaded.chunks.storedSize(d)).toBe(results[0].storedSize);
      }
    } finally {
      await threaded.close();
      await fs.rm(threaded.root, { recursive: true, force: true });
    }
  });
});
