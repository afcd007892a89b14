import { openVhdx } from '../../vhdx';
import { firstDifference, mixedContent, MiB, qemuImg, qemuIo, qemuRaw, tempDir, writeRaw } from './oracle';

// Disks made by qemu-img must read bit for bit like `qemu-img convert -O raw` of the same file.
const t = tempDir('read');
afterAll(() => t.cleanup());

async function readAll(file: string): Promise<Buffer> {
  const disk = await openVhdx(file);
  try {
    // Odd-sized reads cross block boundaries at arbitrary places.
    const out = Buffer.alloc(disk.virtualSize);
    const step = 3 * MiB + 4096;
    for (let o = 0; o < disk.virtualSize; o += step) {
      const n = Math.min(step, disk.virtualSize - o);
      (await disk.read(o, n)).copy(out, o);
    }
    return out;
  } finally {
    await disk.close();
  }
}

const cases: { name: string; size: number; blockMiB: number; subformat: 'dynamic' | 'fixed'; sparse: boolean; logMiB: number }[] = [
  { name: 'dynamic 1 MiB blocks sparse', size: 24 * MiB, blockMiB: 1, subformat: 'dynamic', sparse: true, logMiB: 1 },
  { name: 'dynamic 8 MiB blocks full', size: 20 * MiB + 512 * 3, blockMiB: 8, subformat: 'dynamic', sparse: false, logMiB: 2 },
  { name: 'dynamic 32 MiB blocks sparse', size: 40 * MiB, blockMiB: 32, subformat: 'dynamic', sparse: true, logMiB: 1 },
  { name: 'dynamic 256 MiB blocks', size: 16 * MiB, blockMiB: 256, subformat: 'dynamic', sparse: true, logMiB: 1 },
  { name: 'fixed 2 MiB blocks', size: 12 * MiB, blockMiB: 2, subformat: 'fixed', sparse: true, logMiB: 1 },
];

describe('reading disks qemu-img made', () => {
  for (const c of cases) {
    test(c.name, async () => {
      const raw = mixedContent(c.size, c.size ^ c.blockMiB, c.sparse);
      const rawFile = t.file(`${c.name}.raw`.replace(/ /g, '_'));
      const vhdx = rawFile.replace(/\.raw$/, '.vhdx');
      writeRaw(rawFile, raw);
      qemuImg('convert', '-f', 'raw', '-O', 'vhdx', '-o', `subformat=${c.subformat},block_size=${c.blockMiB}M,log_size=${c.logMiB}M`, rawFile, vhdx);
      const ours = await readAll(vhdx);
      const theirs = qemuRaw(vhdx, t.dir);
      expect(theirs.length).toBe(raw.length);
      expect(firstDifference(ours, theirs)).toBe(-1);
      expect(firstDifference(ours, raw)).toBe(-1);

      const disk = await openVhdx(vhdx);
      expect(disk.kind).toBe(c.subformat);
      expect(disk.blockSize).toBe(c.blockMiB * MiB);
      expect(disk.logicalSectorSize).toBe(512);
      // Every non-zero byte lies inside an allocated range.
      const ranges = await disk.allocatedRanges();
      await disk.close();
      const covered = Buffer.alloc(raw.length);
      for (const r of ranges) covered.fill(1, r.offset, r.offset + r.length);
      let uncoveredNonZero = 0;
      for (let i = 0; i < raw.length; i++) if (raw[i] !== 0 && covered[i] === 0) uncoveredNonZero++;
      expect(uncoveredNonZero).toBe(0);
      // qemu-img convert skips all-zero blocks (qemu-img map cannot tell: its VHDX driver reports every
      // byte as data), so ranges are exactly the blocks holding a non-zero byte — for fixed disks too,
      // where qemu marks all-zero blocks ZERO (block_state_zero).
      const bs = c.blockMiB * MiB;
      const expected: { offset: number; length: number }[] = [];
      for (let o = 0; o < raw.length; o += bs) {
        const block = raw.subarray(o, Math.min(o + bs, raw.length));
        if (block.every((b) => b === 0)) continue;
        const last = expected[expected.length - 1];
        if (last && last.offset + last.length === o) last.length += block.length;
        else expected.push({ offset: o, length: block.length });
      }
      expect(ranges).toEqual(expected);
      if (c.subformat === 'dynamic' && c.sparse && c.blockMiB === 1) {
        // A sparse disk made by convert leaves all-zero blocks out.
        const allocated = ranges.reduce((s, r) => s + r.length, 0);
        expect(allocated).toBeLessThan(raw.length);
      }
    });
  }

  test('disk written by qemu-io after creation (blocks appended out of order)', async () => {
    const vhdx = t.file('qemu-io.vhdx');
    qemuImg('create', '-f', 'vhdx', '-o', 'subformat=dynamic,block_size=1M', vhdx, '16M');
    qemuIo(vhdx, 'write -P 0xa5 12M 1536K', 'write -P 0x3c 0 4096', 'write -P 0x11 5M 512', 'write -z 12M 512K');
    const ours = await readAll(vhdx);
    expect(firstDifference(ours, qemuRaw(vhdx, t.dir))).toBe(-1);
    expect(ours[0]).toBe(0x3c);
    expect(ours[5 * MiB]).toBe(0x11);
    expect(ours[12 * MiB + 512 * 1024]).toBe(0xa5);
    const disk = await openVhdx(vhdx);
    const ranges = await disk.allocatedRanges();
    await disk.close();
    expect(ranges.some((r) => r.offset <= 5 * MiB && r.offset + r.length > 5 * MiB)).toBe(true);
    expect(ranges.some((r) => r.offset <= 8 * MiB && r.offset + r.length > 8 * MiB)).toBe(false);
  });
});
