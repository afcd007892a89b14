// #18: a point cloned from the index of a huge, mostly empty disk stays sparse (the attack made a
// 1 TiB point's copy 129 MB of real disk), and the copy is the same index byte for byte.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IndexBuilder, readIndexVerified } from '../../repository/fixed-index';

const hashOf = async (file: string) => createHash('sha256').update(await fs.readFile(file)).digest('hex');

test('an index clone keeps the base index holes as holes and its bytes', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'hvp-index-copy-'));
  try {
    const base = path.join(dir, 'base.fidx');
    const virtualSize = 128 * 1024 ** 3; // 2 Mi slots of 64 KiB: a 64 MiB slot area
    const b = await IndexBuilder.createEmpty(base, virtualSize, 64 * 1024);
    const d = createHash('sha256').update('chunk').digest();
    await b.patch([0, 1_000_000, b.count - 1], Buffer.concat([d, d, d]));
    await b.finish();
    const clone = path.join(dir, 'clone.fidx');
    const c = await IndexBuilder.cloneFrom(base, clone, virtualSize);
    const st = await fs.stat(clone);
    expect(st.size).toBe((await fs.stat(base)).size);
    expect(st.blocks * 512).toBeLessThan(8 * 1024 * 1024); // a dense copy would be 64 MiB
    expect(await hashOf(clone)).toBe(await hashOf(base));
    await c.finish();
    const { slots } = await readIndexVerified(clone);
    expect(slots.subarray(1_000_000 * 32, 1_000_001 * 32).equals(d)).toBe(true);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
