// IndexBuilder.patch against a model (a plain array of slots): whatever the slots of a patch —
// dense, scattered far apart, unordered, given twice — the old digests it returns are those
// before the patch, the last digest given for a slot is the one stored, and no other slot changes.
// The patch reads and writes runs of neighbouring slots at once (repository/fixed-index.ts), so
// the cases that matter are the edges of a run: slots exactly the gap apart, one more than that.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import { DIGEST_SIZE, IndexBuilder, readIndexVerified } from '../../repository/fixed-index';

const CS = 64 * 1024;
const SLOTS = 4096;

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'hvp-index-patch-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const digest = (n: number): Buffer => createHash('sha256').update(`chunk ${n}`).digest();

test('patches of any shape read and write what a model does', async () => {
  let run = 0;
  // Slots near each other (runs), at the run gap's edge, or anywhere; some given twice.
  const slot = fc.oneof(fc.integer({ min: 0, max: SLOTS - 1 }), fc.integer({ min: 0, max: 15 }).map((k) => Math.min(SLOTS - 1, k * 256)), fc.integer({ min: 0, max: 15 }).map((k) => Math.min(SLOTS - 1, k * 257)));
  await fc.assert(
    fc.asyncProperty(fc.array(fc.array(slot, { minLength: 0, maxLength: 40 }), { minLength: 1, maxLength: 5 }), async (patches) => {
      const file = path.join(dir, `p${run++}.fidx`);
      const b = await IndexBuilder.createEmpty(file, SLOTS * CS, CS);
      const model: Buffer[] = Array.from({ length: SLOTS }, () => Buffer.alloc(DIGEST_SIZE));
      let n = 0;
      for (const slots of patches) {
        const digests = slots.map(() => digest(n++));
        const expectedPrevious = slots.map((s) => Buffer.from(model[s]));
        const previous = await b.patch(slots, Buffer.concat(digests));
        expect(previous.equals(Buffer.concat(expectedPrevious))).toBe(true);
        slots.forEach((s, i) => (model[s] = digests[i]));
      }
      await b.finish();
      const { slots } = await readIndexVerified(file);
      expect(slots.equals(Buffer.concat(model))).toBe(true);
      await fs.rm(file);
    }),
    { numRuns: 60 },
  );
});

test('a patch of scattered slots far apart changes those slots and nothing between them', async () => {
  const file = path.join(dir, 'far.fidx');
  const b = await IndexBuilder.createEmpty(file, SLOTS * CS, CS);
  const slots = [4000, 3, 1000, 257, 0, 2000];
  await b.patch(slots, Buffer.concat(slots.map((s) => digest(s))));
  await b.finish();
  const { slots: stored } = await readIndexVerified(file);
  for (let s = 0; s < SLOTS; s++) {
    const expected = slots.includes(s) ? digest(s) : Buffer.alloc(DIGEST_SIZE);
    expect(stored.subarray(s * DIGEST_SIZE, (s + 1) * DIGEST_SIZE).equals(expected)).toBe(true);
  }
});
