import { Readable } from 'node:stream';
import { createDynamicVhdx, createFixedVhdx, openVhdx, VhdxError, writeRawAsDynamicVhdx } from '../../vhdx';
import { firstDifference, mixedContent, MiB, pyvhdiRaw, qemuImg, qemuImgStatus, qemuRaw, tempDir } from './oracle';

// Disks we write must pass `qemu-img check` and convert to the bytes we wrote. Debian's qemu 7.2
// refuses 4096-byte logical sectors (ENOTSUP), so those disks are read back through libvhdi instead.
const t = tempDir('write');
afterAll(() => t.cleanup());

function checkWithOracles(file: string, logical: number, model: Buffer): void {
  if (logical === 512) {
    const check = qemuImgStatus('check', '-f', 'vhdx', file);
    expect(check.out).toContain('No errors were found');
    expect(check.status).toBe(0);
    expect(firstDifference(qemuRaw(file, t.dir), model)).toBe(-1);
  } else {
    expect(qemuImgStatus('check', '-f', 'vhdx', file).out).toMatch(/Operation not supported/);
  }
  expect(firstDifference(pyvhdiRaw([file], t.dir), model)).toBe(-1);
}

/** Deterministic writes over a model buffer: sector aligned, crossing block boundaries. */
function* writePlan(size: number, sector: number, seed: number, count: number): Generator<{ offset: number; data: Buffer }> {
  let x = seed;
  const rnd = (n: number) => {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    return x % n;
  };
  for (let i = 0; i < count; i++) {
    const sectors = size / sector;
    const len = Math.min(1 + rnd(3 * MiB / sector), sectors);
    const start = rnd(sectors - len + 1);
    const data = mixedContent(len * sector, x + 1, false);
    yield { offset: start * sector, data };
  }
}

const cases: { size: number; blockMiB: number; logical: 512 | 4096; physical: 512 | 4096 }[] = [
  { size: 10 * MiB, blockMiB: 1, logical: 512, physical: 4096 },
  { size: 17 * MiB + 4096, blockMiB: 2, logical: 4096, physical: 4096 },
  { size: 40 * MiB, blockMiB: 32, logical: 512, physical: 512 },
  { size: 8 * MiB, blockMiB: 256, logical: 4096, physical: 512 },
];

describe('writing dynamic disks', () => {
  for (const c of cases) {
    test(`${c.size} bytes, ${c.blockMiB} MiB blocks, ${c.logical}/${c.physical} sectors`, async () => {
      const file = t.file(`dyn-${c.blockMiB}-${c.logical}.vhdx`);
      await createDynamicVhdx(file, { virtualSize: c.size, blockSize: c.blockMiB * MiB, logicalSectorSize: c.logical, physicalSectorSize: c.physical });
      const model = Buffer.alloc(c.size);
      checkWithOracles(file, c.logical, model);
      const disk = await openVhdx(file, { writable: true });
      expect(disk.kind).toBe('dynamic');
      expect(disk.logicalSectorSize).toBe(c.logical);
      expect(disk.physicalSectorSize).toBe(c.physical);
      for (const w of writePlan(c.size, c.logical, c.size + c.blockMiB, 12)) {
        await disk.write(w.offset, w.data);
        w.data.copy(model, w.offset);
      }
      expect(firstDifference(await disk.read(0, c.size), model)).toBe(-1);
      await disk.close();
      checkWithOracles(file, c.logical, model);

      // Reopened: same bytes, and a second session of writes on top.
      const again = await openVhdx(file, { writable: true });
      expect(firstDifference(await again.read(0, c.size), model)).toBe(-1);
      const tail = Buffer.alloc(c.logical * 3, 0x5e);
      await again.write(c.size - tail.length, tail);
      tail.copy(model, c.size - tail.length);
      await again.close();
      checkWithOracles(file, c.logical, model);
    });
  }

  test('disks qemu-img made, dynamic and fixed, written by us', async () => {
    for (const subformat of ['dynamic', 'fixed']) {
      const file = t.file(`qemu-${subformat}.vhdx`);
      qemuImg('create', '-f', 'vhdx', '-o', `subformat=${subformat},block_size=2M,log_size=1M`, file, '12M');
      const model = Buffer.alloc(12 * MiB);
      const disk = await openVhdx(file, { writable: true });
      expect(disk.kind).toBe(subformat);
      for (const w of writePlan(12 * MiB, 512, subformat.length, 8)) {
        await disk.write(w.offset, w.data);
        w.data.copy(model, w.offset);
      }
      await disk.close();
      checkWithOracles(file, 512, model);
    }
  });

  test('fixed disks we create, written in place', async () => {
    for (const logical of [512, 4096] as const) {
      const file = t.file(`fixed-${logical}.vhdx`);
      const size = 9 * MiB + 3 * 4096;
      await createFixedVhdx(file, { virtualSize: size, blockSize: 2 * MiB, logicalSectorSize: logical });
      const model = Buffer.alloc(size);
      checkWithOracles(file, logical, model);
      const disk = await openVhdx(file, { writable: true });
      expect(disk.kind).toBe('fixed');
      expect(await disk.allocatedRanges()).toEqual([{ offset: 0, length: size }]);
      for (const w of writePlan(size, logical, 99, 6)) {
        await disk.write(w.offset, w.data);
        w.data.copy(model, w.offset);
      }
      await disk.close();
      checkWithOracles(file, logical, model);
    }
  });

  test('options given as undefined take the defaults; bad options are refused', async () => {
    const file = t.file('defaults.vhdx');
    await createDynamicVhdx(file, { virtualSize: 64 * MiB, blockSize: undefined, logicalSectorSize: undefined });
    const d = await openVhdx(file);
    expect([d.blockSize, d.logicalSectorSize, d.physicalSectorSize]).toEqual([32 * MiB, 512, 4096]);
    await d.close();
    await expect(createDynamicVhdx(t.file('bad1.vhdx'), { virtualSize: 1000 })).rejects.toThrow(/multiple of 512/);
    await expect(createDynamicVhdx(t.file('bad2.vhdx'), { virtualSize: MiB, blockSize: 3 * MiB })).rejects.toThrow(/power of two/);
    await expect(createDynamicVhdx(t.file('bad3.vhdx'), { virtualSize: 2 ** 47 })).rejects.toThrow(/64 TiB/);
  });

  test('writes must be sector aligned and inside the disk; read-only disks refuse writes', async () => {
    const file = t.file('align.vhdx');
    await createDynamicVhdx(file, { virtualSize: 4 * MiB, blockSize: MiB, logicalSectorSize: 4096 });
    const ro = await openVhdx(file);
    await expect(ro.write(0, Buffer.alloc(4096))).rejects.toThrow(/not opened writable/);
    await ro.close();
    const rw = await openVhdx(file, { writable: true });
    await expect(rw.write(512, Buffer.alloc(4096))).rejects.toThrow(VhdxError);
    await expect(rw.write(0, Buffer.alloc(512))).rejects.toThrow(/aligned/);
    await expect(rw.write(4 * MiB - 4096, Buffer.alloc(8192))).rejects.toThrow(/outside/);
    await rw.close();
  });

  test('concurrent writes to the same unallocated block allocate it once', async () => {
    const file = t.file('concurrent.vhdx');
    await createDynamicVhdx(file, { virtualSize: 8 * MiB, blockSize: 2 * MiB });
    const disk = await openVhdx(file, { writable: true });
    const model = Buffer.alloc(8 * MiB);
    await Promise.all(
      [0, 1, 2, 3, 4, 5, 6, 7].map((i) => {
        const d = Buffer.alloc(64 * 1024, i + 1);
        d.copy(model, i * 256 * 1024);
        return disk.write(i * 256 * 1024, d);
      }),
    );
    await disk.close();
    expect(firstDifference(qemuRaw(file, t.dir), model)).toBe(-1);
    expect(qemuImgStatus('check', '-f', 'vhdx', file).status).toBe(0);
  });

  test('writeRawAsDynamicVhdx exports a raw image, leaving zero blocks out', async () => {
    const raw = mixedContent(21 * MiB + 512, 77, true);
    raw.fill(0, 0, 4 * MiB);
    const file = t.file('export.vhdx');
    const pieces = async function* () {
      for (let o = 0; o < raw.length; o += 1234567) yield raw.subarray(o, Math.min(o + 1234567, raw.length));
    };
    await writeRawAsDynamicVhdx(pieces(), file, { virtualSize: raw.length, blockSize: MiB });
    expect(qemuImgStatus('check', '-f', 'vhdx', file).status).toBe(0);
    expect(firstDifference(qemuRaw(file, t.dir), raw)).toBe(-1);
    const disk = await openVhdx(file);
    const ranges = await disk.allocatedRanges();
    await disk.close();
    expect(ranges[0]!.offset).toBeGreaterThanOrEqual(4 * MiB);
    // Works from a Node stream too.
    const file2 = t.file('export2.vhdx');
    await writeRawAsDynamicVhdx(Readable.from([raw]), file2, { virtualSize: raw.length, blockSize: 4 * MiB, logicalSectorSize: 512 });
    expect(firstDifference(qemuRaw(file2, t.dir), raw)).toBe(-1);
  });
});
