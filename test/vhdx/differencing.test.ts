import { copyFileSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { createDifferencingVhdx, createDynamicVhdx, mergeDifferencingIntoParent, openVhdx, VhdxDisk } from '../../vhdx';
import { firstDifference, mixedContent, MiB, pyvhdiRaw, qemuImg, qemuImgStatus, qemuRaw, tempDir, writeRaw } from './oracle';

// Differencing disks (AVHDX checkpoints): chains read through their parent locators, agree with
// libvhdi (pyvhdi, parents handed over with set_parent), and merge back into their parent.
const t = tempDir('diff');
afterAll(() => t.cleanup());

async function readAll(d: VhdxDisk): Promise<Buffer> {
  return d.read(0, d.virtualSize);
}

/** Writes of every shape: sub-block (PARTIALLY_PRESENT), whole blocks, across block edges. */
function writesFor(size: number, sector: number, seed: number): { offset: number; data: Buffer }[] {
  const w = [
    { offset: sector * 3, data: Buffer.alloc(sector * 2, 0xc1) },
    { offset: 2 * MiB - sector, data: Buffer.alloc(sector * 4, 0xc2) },
    { offset: 4 * MiB, data: mixedContent(2 * MiB, seed, false) },
    { offset: size - 5 * sector, data: Buffer.alloc(5 * sector, 0xc3) },
    { offset: 6 * MiB + 7 * sector, data: mixedContent(300 * sector, seed + 1, false) },
  ];
  return w.filter((x) => x.offset + x.data.length <= size);
}

async function applyWrites(file: string, writes: { offset: number; data: Buffer }[], model: Buffer): Promise<void> {
  const d = await openVhdx(file, { writable: true });
  for (const w of writes) {
    await d.write(w.offset, w.data);
    w.data.copy(model, w.offset);
  }
  await d.close();
}

describe('differencing chains', () => {
  test('512-byte sectors: qemu base, two checkpoints, then merged back into the base', async () => {
    const size = 12 * MiB;
    const base = mixedContent(size, 5, true);
    writeRaw(t.file('base.raw'), base);
    const basePath = t.file('base.vhdx');
    qemuImg('convert', '-f', 'raw', '-O', 'vhdx', '-o', 'subformat=dynamic,block_size=1M', t.file('base.raw'), basePath);

    const c1 = t.file('vm_C1.avhdx');
    await createDifferencingVhdx(c1, basePath);
    const fresh = await openVhdx(c1);
    expect(fresh.kind).toBe('differencing');
    expect(fresh.parent?.kind).toBe('dynamic');
    expect(firstDifference(await readAll(fresh), base)).toBe(-1);
    await fresh.close();

    const model1 = Buffer.from(base);
    await applyWrites(c1, writesFor(size, 512, 11), model1);
    // The checkpoint took the writes; the parent stayed frozen.
    expect(firstDifference(qemuRaw(basePath, t.dir), base)).toBe(-1);

    const c2 = t.file('vm_C2.avhdx');
    await createDifferencingVhdx(c2, c1);
    const model2 = Buffer.from(model1);
    await applyWrites(c2, writesFor(size, 512, 23).map((w) => ({ offset: w.offset + 512 * 9, data: w.data })).filter((w) => w.offset + w.data.length <= size), model2);

    const chain = await openVhdx(c2);
    expect(chain.parent?.parent?.path).toBe(basePath);
    expect(firstDifference(await readAll(chain), model2)).toBe(-1);
    // Reads of odd shapes through the chain.
    for (const [o, n] of [[0, 4096], [2 * MiB - 1024, 8192], [6 * MiB, 3 * MiB + 512]] as const) {
      expect(firstDifference(await chain.read(o, n), model2.subarray(o, o + n))).toBe(-1);
    }
    // Allocated ranges of the chain cover every non-zero byte and skip the rest of the base's holes.
    const ranges = await chain.allocatedRanges();
    const covered = Buffer.alloc(size);
    for (const r of ranges) covered.fill(1, r.offset, r.offset + r.length);
    for (let i = 0; i < size; i++) if (model2[i] !== 0 && !covered[i]) throw new Error(`non-zero byte ${i} outside allocated ranges`);
    await chain.close();

    expect(firstDifference(pyvhdiRaw([c1, basePath], t.dir), model1)).toBe(-1);
    expect(firstDifference(pyvhdiRaw([c2, c1, basePath], t.dir), model2)).toBe(-1);

    // Releasing the checkpoints: merge C2 into C1, then C1 into the base.
    await mergeDifferencingIntoParent(c2);
    rmSync(c2);
    const afterFirst = await openVhdx(c1);
    expect(firstDifference(await readAll(afterFirst), model2)).toBe(-1);
    await afterFirst.close();
    expect(firstDifference(pyvhdiRaw([c1, basePath], t.dir), model2)).toBe(-1);

    await mergeDifferencingIntoParent(c1);
    rmSync(c1);
    const check = qemuImgStatus('check', '-f', 'vhdx', basePath);
    expect(check.out).toContain('No errors were found');
    expect(firstDifference(qemuRaw(basePath, t.dir), model2)).toBe(-1);
  });

  test('4096-byte sectors, our dynamic base with 4 MiB blocks', async () => {
    const size = 16 * MiB;
    const basePath = t.file('base4k.vhdx');
    await createDynamicVhdx(basePath, { virtualSize: size, blockSize: 4 * MiB, logicalSectorSize: 4096, physicalSectorSize: 4096 });
    const model = Buffer.alloc(size);
    await applyWrites(basePath, [{ offset: 0, data: mixedContent(6 * MiB, 9, true) }], model);
    const child = t.file('base4k_C1.avhdx');
    await createDifferencingVhdx(child, basePath);
    await applyWrites(child, writesFor(size, 4096, 31), model);
    const d = await openVhdx(child);
    expect(d.logicalSectorSize).toBe(4096);
    expect(firstDifference(await readAll(d), model)).toBe(-1);
    await d.close();
    expect(firstDifference(pyvhdiRaw([child, basePath], t.dir), model)).toBe(-1);
    await mergeDifferencingIntoParent(child);
    const merged = await openVhdx(basePath);
    expect(firstDifference(await readAll(merged), model)).toBe(-1);
    await merged.close();
    expect(firstDifference(pyvhdiRaw([basePath], t.dir), model)).toBe(-1);
  });

  test('parent found by relative path, then by absolute path; linkage and absence are checked', async () => {
    const size = 4 * MiB;
    const dir = t.file('locate');
    mkdirSync(dir);
    const basePath = path.join(dir, 'p.vhdx');
    await createDynamicVhdx(basePath, { virtualSize: size, blockSize: MiB });
    const model = Buffer.alloc(size);
    await applyWrites(basePath, [{ offset: MiB, data: Buffer.alloc(MiB, 0x77) }], model);
    const child = path.join(dir, 'c.avhdx');
    await createDifferencingVhdx(child, basePath);

    // Both moved together: the relative path still finds the parent.
    const moved = t.file('moved');
    renameSync(dir, moved);
    const viaRelative = await openVhdx(path.join(moved, 'c.avhdx'));
    expect(viaRelative.parent?.path).toBe(path.join(moved, 'p.vhdx'));
    expect(firstDifference(await readAll(viaRelative), model)).toBe(-1);
    await viaRelative.close();

    // Child alone elsewhere, parent back at its recorded absolute path.
    mkdirSync(dir);
    copyFileSync(path.join(moved, 'p.vhdx'), basePath);
    const lone = t.file('lone');
    mkdirSync(lone);
    copyFileSync(path.join(moved, 'c.avhdx'), path.join(lone, 'c.avhdx'));
    const viaAbsolute = await openVhdx(path.join(lone, 'c.avhdx'));
    expect(viaAbsolute.parent?.path).toBe(basePath);
    await viaAbsolute.close();

    // The parent changed after the checkpoint was made: refused, naming the defect.
    await applyWrites(basePath, [{ offset: 0, data: Buffer.alloc(4096, 1) }], Buffer.alloc(size));
    await expect(openVhdx(path.join(lone, 'c.avhdx'))).rejects.toThrow(/parent linkage mismatch/);

    rmSync(basePath);
    await expect(openVhdx(path.join(lone, 'c.avhdx'))).rejects.toThrow(/parent not found/);
  });
});

describe('merge', () => {
  test('an interrupted merge leaves the child readable with the same bytes, and runs again to completion', async () => {
    const size = 24 * MiB;
    const basePath = t.file('m-base.vhdx');
    await createDynamicVhdx(basePath, { virtualSize: size, blockSize: 2 * MiB });
    const model = Buffer.alloc(size);
    await applyWrites(basePath, [{ offset: 0, data: mixedContent(size, 3, true) }], model);
    const other = t.file('m-other.avhdx'); // a second child of the same parent
    await createDifferencingVhdx(other, basePath);
    const child = t.file('m-child.avhdx');
    await createDifferencingVhdx(child, basePath);
    await applyWrites(child, [
      { offset: 512, data: Buffer.alloc(1024, 0xe1) },
      { offset: 3 * MiB, data: mixedContent(9 * MiB, 8, false) },
      { offset: 20 * MiB + 4096, data: Buffer.alloc(MiB, 0xe2) },
    ], model);

    const progress: number[] = [];
    await expect(
      mergeDifferencingIntoParent(child, {
        onProgress: (done) => {
          progress.push(done);
          if (done > 4 * MiB) throw new Error('host lost power');
        },
      }),
    ).rejects.toThrow('host lost power');
    expect(progress.length).toBeGreaterThan(0);

    // The parent changed part way: the child still opens (through parent_linkage2) with the same view.
    const mid = await openVhdx(child);
    expect(firstDifference(await mid.read(0, size), model)).toBe(-1);
    await mid.close();
    // (libvhdi checks parent_linkage only, not parent_linkage2 as MS-VHDX 2.6.2.6.3 asks, so it is no oracle here.)

    await mergeDifferencingIntoParent(child);
    expect(firstDifference(qemuRaw(basePath, t.dir), model)).toBe(-1);
    expect(qemuImgStatus('check', '-f', 'vhdx', basePath).status).toBe(0);
    // The other checkpoint of the changed parent is now refused, as the format intends.
    await expect(openVhdx(other)).rejects.toThrow(/parent linkage mismatch/);
  });
});

describe('rewrites in a checkpoint', () => {
  test('sectors written twice read the second data; neighbours still come from the parent', async () => {
    const size = 4 * MiB;
    const basePath = t.file('rw-base.vhdx');
    await createDynamicVhdx(basePath, { virtualSize: size, blockSize: MiB });
    const model = Buffer.alloc(size);
    await applyWrites(basePath, [{ offset: 0, data: Buffer.alloc(size, 0x44) }], model);
    const child = t.file('rw.avhdx');
    await createDifferencingVhdx(child, basePath, { blockSize: MiB });
    await applyWrites(child, [
      { offset: 8192, data: Buffer.alloc(4096, 1) },
      { offset: 8192, data: Buffer.alloc(4096, 2) },
      { offset: 8192 + 2048, data: Buffer.alloc(4096, 3) }, // half over ours, half over the parent's
    ], model);
    const d = await openVhdx(child);
    expect(firstDifference(await d.read(0, size), model)).toBe(-1);
    expect((await d.read(8192, 1))[0]).toBe(2);
    expect((await d.read(8192 + 6144 - 512, 512))[511]).toBe(3);
    expect((await d.read(8192 + 6144, 512))[0]).toBe(0x44);
    await d.close();
    expect(firstDifference(pyvhdiRaw([child, basePath], t.dir), model)).toBe(-1);
  });
});

describe('checkpoints made without sector bitmaps', () => {
  test('the first partial write allocates the sector bitmap', async () => {
    const { readFileSync, writeFileSync } = await import('node:fs');
    const { batGeometry } = await import('../../vhdx/bat');
    const size = 6 * MiB;
    const basePath = t.file('nosb-base.vhdx');
    await createDynamicVhdx(basePath, { virtualSize: size, blockSize: MiB });
    const model = Buffer.alloc(size);
    await applyWrites(basePath, [{ offset: 0, data: mixedContent(size, 17, false) }], model);
    const child = t.file('nosb.avhdx');
    await createDifferencingVhdx(child, basePath, { blockSize: MiB });
    // Clear the sector bitmap's BAT entry, as a creator that allocates bitmaps lazily leaves it.
    const g = batGeometry({ blockSize: MiB, virtualSize: size, logicalSectorSize: 512, hasParent: true });
    const img = readFileSync(child);
    const entry = 3 * MiB + g.chunkRatio * 8;
    expect(img[entry]! & 7).toBe(6);
    img.writeBigUInt64LE(0n, entry);
    writeFileSync(child, img);
    const fresh = await openVhdx(child);
    expect(firstDifference(await fresh.read(0, size), model)).toBe(-1);
    await fresh.close();
    await applyWrites(child, [{ offset: 2 * MiB + 1024, data: Buffer.alloc(3072, 0x5c) }], model);
    expect(readFileSync(child)[entry]! & 7).toBe(6);
    const d = await openVhdx(child);
    expect(firstDifference(await d.read(0, size), model)).toBe(-1);
    await d.close();
    expect(firstDifference(pyvhdiRaw([child, basePath], t.dir), model)).toBe(-1);
  });
});

describe('concurrent use of one open disk', () => {
  test('reads racing writes on other sectors see the parent or the new data, never a gap', async () => {
    const size = 4 * MiB;
    const basePath = t.file('race-base.vhdx');
    await createDynamicVhdx(basePath, { virtualSize: size, blockSize: MiB });
    const model = Buffer.alloc(size, 0x99);
    await applyWrites(basePath, [{ offset: 0, data: Buffer.alloc(size, 0x99) }], Buffer.alloc(size));
    const child = t.file('race.avhdx');
    await createDifferencingVhdx(child, basePath, { blockSize: MiB });
    const d = await openVhdx(child, { writable: true });
    const writes: Promise<void>[] = [];
    const reads: Promise<void>[] = [];
    // Even 4 KiB slots are written, odd ones only read; every odd slot must always read 0x99.
    for (let slot = 0; slot < size / 4096; slot += 2) {
      const data = Buffer.alloc(4096, (slot % 250) + 1);
      data.copy(model, slot * 4096);
      writes.push(d.write(slot * 4096, data));
      const probe = slot + 1;
      reads.push(
        d.read(probe * 4096, 4096).then((b) => {
          if (!b.equals(Buffer.alloc(4096, 0x99))) throw new Error(`slot ${probe} read ${b[0]} during writes`);
        }),
      );
    }
    await Promise.all([...writes, ...reads]);
    expect(firstDifference(await d.read(0, size), model)).toBe(-1);
    await d.close();
    expect(firstDifference(pyvhdiRaw([child, basePath], t.dir), model)).toBe(-1);
  });
});
