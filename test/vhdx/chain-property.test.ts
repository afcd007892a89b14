import * as fc from 'fast-check';
import { createDifferencingVhdx, createDynamicVhdx, openVhdx } from '../../vhdx';
import { firstDifference, MiB, pyvhdiRaw, qemuRaw, tempDir } from './oracle';

// Property: any chain (dynamic base + up to two checkpoints), any block and sector sizes, any
// sector-aligned writes at any level: our reads equal a plain buffer model, libvhdi reads the same,
// and allocated ranges cover every non-zero byte. Small disks, few runs: each run spawns pyvhdi.
const t = tempDir('chainprop');
afterAll(() => t.cleanup());

const writeArb = (sectors: number) =>
  fc.record({ start: fc.integer({ min: 0, max: sectors - 1 }), count: fc.integer({ min: 1, max: 2400 }), fill: fc.integer({ min: 1, max: 255 }) });

test('chains of dynamic and differencing disks read like a buffer model and like libvhdi', async () => {
  let run = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(512, 4096),
      fc.constantFrom(1, 2, 8, 256),
      fc.constantFrom(1, 2, 32),
      fc.integer({ min: 2 * MiB, max: 14 * MiB }),
      fc.array(fc.array(writeArb(1 << 20), { maxLength: 5 }), { minLength: 1, maxLength: 3 }),
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 3 * MiB })), { minLength: 1, maxLength: 5 }),
      async (sector, baseBlockMiB, childBlockMiB, rawSize, levels, reads) => {
        const size = Math.floor(rawSize / sector) * sector;
        const sectors = size / sector;
        const dir = `r${run++}`;
        const files: string[] = [];
        const model = Buffer.alloc(size);
        for (let level = 0; level < levels.length; level++) {
          const file = t.file(`${dir}-${level}.${level ? 'avhdx' : 'vhdx'}`);
          if (level === 0) await createDynamicVhdx(file, { virtualSize: size, blockSize: baseBlockMiB * MiB, logicalSectorSize: sector as 512 | 4096 });
          else await createDifferencingVhdx(file, files[level - 1]!, { blockSize: childBlockMiB * MiB });
          files.push(file);
          const disk = await openVhdx(file, { writable: true });
          for (const w of levels[level]!) {
            const start = w.start % sectors;
            const count = Math.min(w.count, sectors - start);
            const data = Buffer.alloc(count * sector, w.fill);
            data.writeUInt32LE(level * 1000 + start, 0); // distinguishes levels and places
            await disk.write(start * sector, data);
            data.copy(model, start * sector);
          }
          await disk.close();
        }
        const top = files[files.length - 1]!;
        const disk = await openVhdx(top);
        expect(firstDifference(await disk.read(0, size), model)).toBe(-1);
        for (const [o, n] of reads) {
          const offset = o % size;
          const length = Math.min(n, size - offset);
          expect(firstDifference(await disk.read(offset, length), model.subarray(offset, offset + length))).toBe(-1);
        }
        const covered = Buffer.alloc(size);
        for (const r of await disk.allocatedRanges()) covered.fill(1, r.offset, r.offset + r.length);
        await disk.close();
        for (let i = 0; i < size; i += 512) if (!covered[i] && !model.subarray(i, i + 512).every((b) => b === 0)) throw new Error(`data at ${i} outside allocated ranges`);
        expect(firstDifference(pyvhdiRaw([...files].reverse(), t.dir), model)).toBe(-1);
        if (sector === 512 && files.length === 1) expect(firstDifference(qemuRaw(top, t.dir), model)).toBe(-1);
      },
    ),
    { numRuns: 14 },
  );
});
