// The raw restore file's writer: O_DIRECT where the file system takes it (the restored bytes do
// not pass through the page cache), a buffered descriptor for unaligned writes and as the
// fallback, a short last block padded and cut back. Checked against the bytes meant, the file's
// size, and the page cache as util-linux's fincore sees it.
import { execFileSync } from 'node:child_process';
import { constants, promises as fs } from 'node:fs';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { openRawDiskWriter } from '../../recovery/raw-writer';
import { tempDir } from '../storage-api/support';

const CS = 64 * 1024;

/** Whether this folder's file system takes O_DIRECT (tmpfs does not). */
async function directWorks(dir: string): Promise<boolean> {
  const probe = path.join(dir, 'probe');
  try {
    await (await fs.open(probe, constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT)).close();
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EINVAL') return false;
    throw err;
  } finally {
    await fs.rm(probe, { force: true });
  }
}

/** Bytes of the file in the page cache. */
function cachedBytes(file: string): number {
  return Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file]).toString().trim());
}

test('chunk-aligned writes go past the page cache; an unaligned one and the short last block come out right', async () => {
  const dir = await tempDir('hvp-rawwriter-');
  const direct = await directWorks(dir);
  // 40 chunks and three 512-byte sectors: the last slot is short.
  const size = 40 * CS + 3 * 512;
  const want = Buffer.alloc(size);
  const file = path.join(dir, 'disk.raw');
  const w = await openRawDiskWriter(file, size, false);
  // Slots 0-15 as one write of 16 pieces, 16-31 as two writes under way at once, 32-38 left
  // unwritten (zero, sparse), the short last slot alone.
  const piece = (slot: number, length = CS) => {
    const b = randomBytes(length);
    b.copy(want, slot * CS);
    return b;
  };
  await w.writeMany!(0, Array.from({ length: 16 }, (_, i) => piece(i)));
  await Promise.all([w.writeMany!(16 * CS, Array.from({ length: 8 }, (_, i) => piece(16 + i))), w.write(24 * CS, Buffer.concat(Array.from({ length: 8 }, (_, i) => piece(24 + i))))]);
  const aligned = size - 39 * CS;
  await w.write(39 * CS, piece(39, aligned));
  const directAfterAligned = w.stats.directBytes;
  // Unaligned (as a volume restore that starts mid-chunk writes): buffered, still exact.
  const odd = randomBytes(3000);
  odd.copy(want, 33 * CS + 1000);
  await w.write(33 * CS + 1000, odd);
  await w.close();

  expect((await fs.stat(file)).size).toBe(size);
  expect((await fs.readFile(file)).equals(want)).toBe(true);
  if (direct) {
    expect(directAfterAligned).toBe(32 * CS + aligned);
    expect(w.stats.bufferedBytes).toBe(3000);
    // Written direct, then read once by readFile above, so clear the cache's view first: the
    // check is on a fresh write of the same shape.
    const again = path.join(dir, 'again.raw');
    const w2 = await openRawDiskWriter(again, size, false);
    await w2.writeMany!(0, Array.from({ length: 32 }, (_, i) => want.subarray(i * CS, (i + 1) * CS)));
    await w2.close();
    expect(cachedBytes(again)).toBeLessThan(CS); // 2 MiB written, next to nothing of it cached
  } else {
    // No O_DIRECT here: everything went through the fallback, and still byte for byte.
    expect(w.stats.directBytes).toBe(0);
    expect(w.stats.bufferedBytes).toBe(32 * CS + aligned + 3000);
  }
  await fs.rm(dir, { recursive: true, force: true });
});

test('direct: false writes everything through the page cache, the same bytes; resuming reopens the file', async () => {
  const dir = await tempDir('hvp-rawwriter-');
  const size = 8 * CS;
  const data = randomBytes(size);
  const file = path.join(dir, 'disk.raw');
  const w = await openRawDiskWriter(file, size, false, { direct: false });
  await w.writeMany!(0, [data.subarray(0, 4 * CS)]);
  await w.close();
  expect(w.stats.directBytes).toBe(0);
  expect(w.stats.bufferedBytes).toBe(4 * CS);
  // A new file is never written over; a resumed one is reopened and keeps what was there.
  await expect(openRawDiskWriter(file, size, false)).rejects.toThrow(/EEXIST/);
  const r = await openRawDiskWriter(file, size, true);
  await r.write(4 * CS, data.subarray(4 * CS));
  await r.close();
  expect((await fs.readFile(file)).equals(data)).toBe(true);
  await fs.rm(dir, { recursive: true, force: true });
});
