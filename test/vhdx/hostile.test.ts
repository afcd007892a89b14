import * as fc from 'fast-check';
import { readFileSync, writeFileSync, truncateSync } from 'node:fs';
import { createDifferencingVhdx, createDynamicVhdx, openVhdx, VhdxError } from '../../vhdx';
import { crc32c } from '../../vhdx/crc32c';
import { encodeParentLocator, locatorEntriesFor } from '../../vhdx/parent-locator';
import { MiB, tempDir } from './oracle';

// Hostile input: whatever the bytes, opening and reading a file ends in data or in a VhdxError
// naming the file and the defect — never another exception, a hang or a huge allocation.
const t = tempDir('hostile');
afterAll(() => t.cleanup());

const SIZE = 6 * MiB;
let dynamicImage: Buffer;
let closedImage: Buffer;
let childImage: Buffer;
let parentPath: string;

/** Open, read everything, list ranges; returns 'ok' or the VhdxError's message; anything else fails. */
async function exercise(file: string): Promise<string> {
  let disk;
  try {
    disk = await openVhdx(file);
  } catch (e) {
    if (!(e instanceof VhdxError)) throw e;
    expect(e.file).toBe(file);
    expect(e.message.startsWith(`${file}: `)).toBe(true);
    return e.message;
  }
  try {
    // Reads within the reported virtual size are bounded by the file's real size for allocation.
    const n = Math.min(disk.virtualSize, 64 * MiB);
    await disk.read(0, n);
    await disk.allocatedRanges();
    return 'ok';
  } catch (e) {
    if (!(e instanceof VhdxError)) throw e;
    return e.message;
  } finally {
    await disk.close();
  }
}

/** Recompute the CRC-32C of both headers and both region tables, so mutations reach deeper parsers. */
function fixChecksums(img: Buffer): void {
  for (const [at, len] of [[64 * 1024, 4096], [128 * 1024, 4096], [192 * 1024, 65536], [256 * 1024, 65536]] as const) {
    if (img.length < at + len) continue;
    img.writeUInt32LE(0, at + 4);
    img.writeUInt32LE(crc32c(img.subarray(at, at + len)), at + 4);
  }
}

beforeAll(async () => {
  const dyn = t.file('seed-dynamic.vhdx');
  await createDynamicVhdx(dyn, { virtualSize: SIZE, blockSize: MiB });
  const d = await openVhdx(dyn, { writable: true });
  await d.write(MiB, Buffer.alloc(2 * MiB, 0x5a));
  await d.flush();
  dynamicImage = readFileSync(dyn); // taken before close: the header still names a log with entries
  await d.close();
  closedImage = readFileSync(dyn); // the log is empty again: edits below are not undone by a replay
  parentPath = t.file('seed-parent.vhdx');
  writeFileSync(parentPath, readFileSync(dyn));
  const child = t.file('seed-child.avhdx');
  await createDifferencingVhdx(child, parentPath, { blockSize: MiB });
  const c = await openVhdx(child, { writable: true });
  await c.write(512, Buffer.alloc(4096, 0x33));
  await c.close();
  childImage = readFileSync(child);
});

const structureOffset = fc.oneof(
  fc.integer({ min: 0, max: 320 * 1024 }), // identifier, headers, region tables
  fc.integer({ min: MiB, max: 2 * MiB - 1 }), // log
  fc.integer({ min: 2 * MiB, max: 2 * MiB + 96 * 1024 }), // metadata table and items
  fc.integer({ min: 3 * MiB, max: 3 * MiB + 4096 }), // BAT
);
const mutations = fc.array(fc.tuple(structureOffset, fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 12 });

describe('hostile input', () => {
  test('random byte changes in the structures (checksums left stale or recomputed)', async () => {
    const file = t.file('fuzz.vhdx');
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('dynamic', 'child'), mutations, fc.boolean(), async (which, muts, fix) => {
        const img = Buffer.from(which === 'dynamic' ? dynamicImage : childImage);
        for (const [at, v] of muts) if (at < img.length) img[at] = v;
        if (fix) fixChecksums(img);
        writeFileSync(file, img);
        await exercise(file);
      }),
      { numRuns: 250 },
    );
  });

  test('random 8-byte values in the BAT, the metadata items and the log headers', async () => {
    const file = t.file('fuzz-wide.vhdx');
    const field = fc.tuple(
      fc.oneof(fc.integer({ min: 3 * MiB, max: 3 * MiB + 64 }), fc.integer({ min: 2 * MiB + 64 * 1024, max: 2 * MiB + 96 * 1024 }), fc.integer({ min: 64 * 1024 + 64, max: 64 * 1024 + 80 }), fc.integer({ min: MiB, max: MiB + 64 })),
      fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(field, { minLength: 1, maxLength: 4 }), async (fields) => {
        const img = Buffer.from(dynamicImage);
        for (const [at, v] of fields) img.writeBigUInt64LE(v, at & ~7);
        fixChecksums(img);
        writeFileSync(file, img);
        await exercise(file);
      }),
      { numRuns: 200 },
    );
  });

  test('truncation anywhere', async () => {
    const file = t.file('truncated.vhdx');
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: dynamicImage.length - 1 }), async (len) => {
        writeFileSync(file, dynamicImage.subarray(0, len));
        const r = await exercise(file);
        // Every cut loses a structure or a payload block the BAT points at.
        expect(r).not.toBe('ok');
      }),
      { numRuns: 120 },
    );
  });

  test('named defects', async () => {
    const f = t.file('named.vhdx');
    const variant = async (edit: (img: Buffer) => void, fix = true) => {
      const img = Buffer.from(closedImage);
      edit(img);
      if (fix) fixChecksums(img);
      writeFileSync(f, img);
      return exercise(f);
    };
    writeFileSync(f, closedImage.subarray(0, 500 * 1024));
    expect(await exercise(f)).toMatch(/truncated/);
    writeFileSync(f, closedImage);
    truncateSync(f, closedImage.length - MiB);
    expect(await exercise(f)).toMatch(/truncated|outside the file/);
    expect(await variant((img) => { img[64 * 1024 + 100] ^= 1; img[128 * 1024 + 100] ^= 1; }, false)).toMatch(/no valid header.*bad CRC-32C/);
    expect(await variant((img) => img.write('notvhdx!', 0, 'latin1'))).toMatch(/not a VHDX file/);
    // BAT entry 1 (block 1) pointing 1 TiB into the file.
    expect(await variant((img) => img.writeBigUInt64LE((1n << 40n) | 6n, 3 * MiB + 8))).toMatch(/BAT entry 1: payload block 1 at file offset 1099511627776 lies outside the file/);
    expect(await variant((img) => img.writeBigUInt64LE(5n, 3 * MiB + 16))).toMatch(/invalid state 5/);
    // Virtual size item (second metadata item, at 64 KiB + 4 KiB in the region): absurd sizes.
    const sizeAt = 2 * MiB + 64 * 1024 + 4096;
    expect(await variant((img) => img.writeBigUInt64LE(1n << 62n, sizeAt))).toMatch(/virtual disk size .* outside 1 byte \.\. 64 TiB/);
    expect(await variant((img) => img.writeBigUInt64LE(64n << 40n, sizeAt))).toMatch(/BAT region holds 131072 entries but .* needs/);
    expect(await variant((img) => img.writeUInt32LE(3 * MiB, 2 * MiB + 64 * 1024))).toMatch(/block size 3145728 is not a power of two/);
    // Headers naming a log (non-zero LogGuid) of 4 GiB, and a log past the end of the file.
    const withLog = (img: Buffer, field: number, value: bigint, width: 4 | 8) => {
      for (const h of [64 * 1024, 128 * 1024]) {
        img.fill(0x17, h + 48, h + 64);
        if (width === 4) img.writeUInt32LE(Number(value), h + field);
        else img.writeBigUInt64LE(value, h + field);
      }
    };
    expect(await variant((img) => withLog(img, 68, BigInt(4095 * MiB), 4))).toMatch(/log of 4293918720 bytes is larger than/);
    expect(await variant((img) => withLog(img, 72, 1n << 40n, 8))).toMatch(/truncated: log/);
  });

  test('one bad header: the other is used; of two good ones, the higher sequence number wins', async () => {
    const f = t.file('headers.vhdx');
    const img = Buffer.from(childImage);
    writeFileSync(f, img);
    const d = await openVhdx(f);
    const guid = d.dataWriteGuid;
    await d.close();
    // Give header 1 a far higher sequence number and another DataWriteGuid, checksums intact.
    const h1 = 64 * 1024;
    img.writeBigUInt64LE(1000n, h1 + 8);
    img[h1 + 32] ^= 0xff;
    fixChecksums(img);
    writeFileSync(f, img);
    const high = await openVhdx(f);
    expect(high.dataWriteGuid).not.toBe(guid);
    await high.close();
    img[h1 + 200] ^= 1; // now its checksum fails
    writeFileSync(f, img);
    const fallback = await openVhdx(f);
    await fallback.close();
    expect(fallback.dataWriteGuid).not.toBe(high.dataWriteGuid);
  });

  test('a parent locator naming a FIFO or a folder is refused, not waited on', async () => {
    const { execFileSync } = await import('node:child_process');
    const { mkdirSync } = await import('node:fs');
    const fifo = t.file('fifo-parent.vhdx');
    execFileSync('mkfifo', [fifo]);
    await expect(openVhdx(fifo)).rejects.toThrow(/fifo-parent\.vhdx: not a regular file/);
    const folder = t.file('folder.vhdx');
    mkdirSync(folder);
    await expect(openVhdx(folder)).rejects.toThrow(/not a regular file/);
  });

  test('a loop in the parent chain is named, not followed', async () => {
    const a = t.file('loop-a.avhdx');
    const b = t.file('loop-b.avhdx');
    await createDifferencingVhdx(a, parentPath);
    await createDifferencingVhdx(b, a);
    const bDisk = await openVhdx(b);
    const bGuid = bDisk.dataWriteGuid;
    await bDisk.close();
    // Point A's locator at B, with B's DataWriteGuid as the linkage: A -> B -> A.
    const img = readFileSync(a);
    const item = encodeParentLocator(locatorEntriesFor(a, b, bGuid));
    const table = 2 * MiB;
    const count = img.readUInt16LE(table + 10);
    for (let i = 0; i < count; i++) {
      const e = table + 32 + i * 32;
      if (img.readUInt32LE(e) === 0xa8d35f2d) {
        const offset = img.readUInt32LE(e + 16);
        img.fill(0, table + offset, table + offset + 4096);
        item.copy(img, table + offset);
        img.writeUInt32LE(item.length, e + 20);
      }
    }
    writeFileSync(a, img);
    const e = await openVhdx(b).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VhdxError);
    expect((e as Error).message).toMatch(/parent chain loop: .*loop-b\.avhdx -> .*loop-a\.avhdx -> .*loop-b\.avhdx/);
  });
});
