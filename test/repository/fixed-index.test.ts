import fc from 'fast-check';
import { rm } from 'node:fs/promises';
import { forEachNonZeroSlot, readIndexVerified } from '../../repository/fixed-index';
import { verifyRepository } from '../../repository';
import type { Repository } from '../../repository';
import { backup, digestOf, restore, tempRepo } from './support';

const CS = 64 * 1024;

describe('fixed index cloning and restore (property-based)', () => {
  let repo: Repository;
  beforeAll(async () => {
    repo = await tempRepo();
  });
  afterAll(async () => {
    await repo.close();
    await rm(repo.root, { recursive: true, force: true });
  });

  it('every point of an incremental chain restores bit for bit and its index equals the model', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 12 * CS }), // disk size, often not chunk-aligned
        fc.array(fc.array(fc.record({ at: fc.nat(), len: fc.integer({ min: 1, max: 3 * CS }), byte: fc.integer({ min: 0, max: 255 }) }), { maxLength: 6 }), { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 1, max: 1 << 30 }),
        async (size, generations, seed) => {
          const ds = `prop-${run++}`;
          const disk = Buffer.alloc(size);
          for (let i = 0; i < size; i += 997) disk[i] = (seed + i) & 0xff;
          const points: Array<{ id: string; image: Buffer }> = [];
          let m = await backup(repo, ds, disk);
          points.push({ id: m.pointId, image: Buffer.from(disk) });
          for (const writes of generations) {
            const changed = new Set<number>();
            for (const w of writes) {
              const at = w.at % size;
              const end = Math.min(size, at + w.len);
              disk.fill(w.byte, at, end);
              for (let s = Math.floor(at / CS); s <= Math.floor((end - 1) / CS); s++) changed.add(s);
            }
            m = await backup(repo, ds, disk, { base: m.pointId, changedSlots: [...changed].sort((a, b) => a - b) });
            expect(m.disks[0].changedChunks).toBeLessThanOrEqual(changed.size);
            points.push({ id: m.pointId, image: Buffer.from(disk) });
          }
          for (const p of points) {
            // The index is exactly the digests of the image's chunks (the clone kept every slot
            // that was not overwritten).
            const { slots } = await readIndexVerified(repo.indexPath(ds, p.id, 'disk0'));
            for (let s = 0; s * CS < size; s++) {
              expect(slots.subarray(s * 32, s * 32 + 32).equals(digestOf(p.image.subarray(s * CS, Math.min(size, (s + 1) * CS))))).toBe(true);
            }
            expect((await restore(repo, ds, p.id)).equals(p.image)).toBe(true);
            const off = seed % size;
            const len = Math.min(size - off, (seed >> 3) % (2 * CS));
            expect((await restore(repo, ds, p.id, 'disk0', { offset: off, length: len })).equals(p.image.subarray(off, off + len))).toBe(true);
          }
        },
      ),
      { numRuns: 25 },
    );
    expect((await verifyRepository(repo, { readData: true })).ok).toBe(true);
  });

  it('a disk that grows or shrinks between points keeps the common slots', async () => {
    const a = Buffer.alloc(5 * CS, 7);
    const m1 = await backup(repo, 'resize', a);
    const b = Buffer.concat([a, Buffer.alloc(2 * CS, 9)]);
    const m2 = await backup(repo, 'resize', b, { base: m1.pointId, changedSlots: [5, 6] });
    expect((await restore(repo, 'resize', m2.pointId)).equals(b)).toBe(true);
    const c = b.subarray(0, 3 * CS + 100);
    const m3 = await backup(repo, 'resize', c, { base: m2.pointId, changedSlots: [3] });
    expect((await restore(repo, 'resize', m3.pointId)).equals(c)).toBe(true);
  });
});

describe('forEachNonZeroSlot (verify and GC skip all-zero pages of an index)', () => {
  it('visits exactly the non-zero slots, across page boundaries and a partial last page', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 700 }), fc.uniqueArray(fc.nat(699), { maxLength: 40 }), fc.nat(31), (count, set, byte) => {
        const slots = Buffer.alloc(count * 32);
        const expected = set.filter((i) => i < count).sort((a, b) => a - b);
        for (const i of expected) slots[i * 32 + byte] = 1 + (i % 255);
        const seen: number[] = [];
        forEachNonZeroSlot(slots, (o) => seen.push(o / 32));
        expect(seen).toEqual(expected);
      }),
      { numRuns: 300, seed: 18 },
    );
  });
});
