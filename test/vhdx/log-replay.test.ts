import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { createDynamicVhdx, openVhdx, VhdxError } from '../../vhdx';
import { firstDifference, MiB, qemuImgStatus, qemuRaw, tempDir } from './oracle';

// A crash after a log entry is durable but before its sectors reached their place: the file's BAT
// is stale and only the log knows the truth. Readers must replay it (in memory when read-only, on
// disk when writable) or refuse — never read the stale BAT.
const t = tempDir('log');
afterAll(() => t.cleanup());

const SIZE = 8 * MiB;
const BAT_REGION = { offset: 3 * MiB, length: MiB }; // where createDynamicVhdx puts the BAT
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

/** Make `crashed.vhdx`: two logged writes, the second one's BAT update lost from its place. */
async function crashImage(): Promise<{ crashed: string; model: Buffer; beforeSecond: Buffer }> {
  const live = t.file('live.vhdx');
  await createDynamicVhdx(live, { virtualSize: SIZE, blockSize: MiB });
  const model = Buffer.alloc(SIZE);
  const disk = await openVhdx(live, { writable: true });
  const first = Buffer.alloc(MiB + 4096, 0x41);
  await disk.write(512 * 1024, first);
  first.copy(model, 512 * 1024);
  await disk.flush();
  const batAfterFirst = readFileSync(live).subarray(BAT_REGION.offset, BAT_REGION.offset + BAT_REGION.length);
  const beforeSecond = Buffer.from(model);
  const second = Buffer.alloc(2 * MiB, 0x42);
  await disk.write(5 * MiB, second);
  second.copy(model, 5 * MiB);
  await disk.flush();
  const image = readFileSync(live);
  await disk.close();
  batAfterFirst.copy(image, BAT_REGION.offset);
  const crashed = t.file('crashed.vhdx');
  writeFileSync(crashed, image);
  return { crashed, model, beforeSecond };
}

describe('log replay after a crash', () => {
  let img: { crashed: string; model: Buffer; beforeSecond: Buffer };
  beforeAll(async () => {
    img = await crashImage();
  });

  test('qemu-img sees our log as pending and refuses a read-only open', () => {
    const r = qemuImgStatus('info', '-f', 'vhdx', img.crashed);
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(/log that needs to be replayed/);
  });

  test('replayLog: false refuses with a clear message', async () => {
    const e = await openVhdx(img.crashed, { replayLog: false }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VhdxError);
    expect((e as VhdxError).message).toMatch(/crashed\.vhdx: the log holds 1 entry that must be replayed/);
  });

  test('a read-only open replays in memory and leaves the file untouched', async () => {
    const before = sha(img.crashed);
    const d = await openVhdx(img.crashed);
    expect(firstDifference(await d.read(0, SIZE), img.model)).toBe(-1);
    const ranges = await d.allocatedRanges();
    await d.close();
    expect(ranges.some((r) => r.offset <= 5 * MiB && r.offset + r.length >= 7 * MiB)).toBe(true);
    expect(sha(img.crashed)).toBe(before);
  });

  test('qemu-img check -r all replays our log to the same bytes', async () => {
    const copy = t.file('qemu-replayed.vhdx');
    copyFileSync(img.crashed, copy);
    qemuImgStatus('check', '-r', 'all', '-f', 'vhdx', copy);
    expect(firstDifference(qemuRaw(copy, t.dir), img.model)).toBe(-1);
  });

  test('a writable open replays on disk and clears the log', async () => {
    const copy = t.file('replayed.vhdx');
    copyFileSync(img.crashed, copy);
    const d = await openVhdx(copy, { writable: true });
    await d.close();
    const check = qemuImgStatus('check', '-f', 'vhdx', copy);
    expect(check.out).toContain('No errors were found');
    expect(firstDifference(qemuRaw(copy, t.dir), img.model)).toBe(-1);
    const again = await openVhdx(copy, { replayLog: false });
    expect(firstDifference(await again.read(0, SIZE), img.model)).toBe(-1);
    await again.close();
  });

  test('a torn log entry is not replayed: the write it carried never happened', async () => {
    const copy = t.file('torn.vhdx');
    const image = readFileSync(img.crashed);
    // The second entry follows the first in the 1 MiB log at 1 MiB; tear its last data sector.
    const log = image.subarray(MiB, 2 * MiB);
    const heads: number[] = [];
    for (let p = 0; p < log.length; p += 4096) if (log.toString('latin1', p, p + 4) === 'loge') heads.push(p);
    expect(heads.length).toBe(2);
    const second = heads[1]!;
    const length = log.readUInt32LE(second + 8);
    log[second + length - 100]! ^= 0xff;
    writeFileSync(copy, image);
    const d = await openVhdx(copy);
    expect(firstDifference(await d.read(0, SIZE), img.beforeSecond)).toBe(-1);
    await d.close();
    qemuImgStatus('check', '-r', 'all', '-f', 'vhdx', copy);
    expect(firstDifference(qemuRaw(copy, t.dir), img.beforeSecond)).toBe(-1);
  });
});

describe('a log entry that wraps around the end of the circular log', () => {
  test('is found and replayed (and qemu-img agrees)', async () => {
    const { crc32c } = await import('../../vhdx/crc32c');
    const img = await crashImage();
    const image = readFileSync(img.crashed);
    const log = Buffer.from(image.subarray(MiB, 2 * MiB));
    const heads: number[] = [];
    for (let p = 0; p < log.length; p += 4096) if (log.toString('latin1', p, p + 4) === 'loge') heads.push(p);
    const head = heads[heads.length - 1]!;
    const length = log.readUInt32LE(head + 8);
    expect(length).toBeGreaterThan(4096);
    // Rotate the log so the head entry starts in its last sector and continues at its start.
    const newPos = log.length - 4096;
    const shift = (newPos - head + log.length) % log.length;
    const rotated = Buffer.alloc(log.length);
    for (let p = 0; p < log.length; p += 4096) log.copy(rotated, (p + shift) % log.length, p, p + 4096);
    const entry = Buffer.concat([rotated.subarray(newPos), rotated.subarray(0, length - 4096)]);
    entry.writeUInt32LE(newPos, 12); // Tail: the entry itself
    entry.writeUInt32LE(0, 4);
    entry.writeUInt32LE(crc32c(entry), 4);
    entry.copy(rotated, newPos, 0, 4096);
    entry.copy(rotated, 0, 4096);
    rotated.copy(image, MiB);
    const file = t.file('wrapped.vhdx');
    writeFileSync(file, image);
    const d = await openVhdx(file);
    expect(firstDifference(await d.read(0, SIZE), img.model)).toBe(-1);
    await d.close();
    qemuImgStatus('check', '-r', 'all', '-f', 'vhdx', file);
    expect(firstDifference(qemuRaw(file, t.dir), img.model)).toBe(-1);
  });
});

describe('a sequence of several entries (Tail pointing back)', () => {
  test('is found as one sequence of two entries and replayed', async () => {
    const { crc32c } = await import('../../vhdx/crc32c');
    const img = await crashImage();
    const image = readFileSync(img.crashed);
    const log = image.subarray(MiB, 2 * MiB);
    const heads: number[] = [];
    for (let p = 0; p < log.length; p += 4096) if (log.toString('latin1', p, p + 4) === 'loge') heads.push(p);
    expect(heads.length).toBe(2);
    const [first, second] = heads as [number, number];
    expect(log.readBigUInt64LE(second + 16)).toBe(log.readBigUInt64LE(first + 16) + 1n);
    // The second entry now names the first as the start of its sequence, and neither BAT update
    // reached its place: the reader must take both as the active sequence (the count says so).
    const length = log.readUInt32LE(second + 8);
    const entry = log.subarray(second, second + length);
    entry.writeUInt32LE(first, 12);
    entry.writeUInt32LE(0, 4);
    entry.writeUInt32LE(crc32c(entry), 4);
    image.fill(0, BAT_REGION.offset, BAT_REGION.offset + BAT_REGION.length);
    const file = t.file('sequence.vhdx');
    writeFileSync(file, image);
    const d = await openVhdx(file);
    expect(firstDifference(await d.read(0, SIZE), img.model)).toBe(-1);
    await d.close();
    const refused = await openVhdx(file, { replayLog: false }).catch((e: Error) => e.message);
    expect(refused).toMatch(/the log holds 2 entries/);
  });
});

describe('log replay in a differencing disk', () => {
  test('a lost BAT and sector bitmap update is recovered from the log', async () => {
    const { createDifferencingVhdx } = await import('../../vhdx');
    const { pyvhdiRaw } = await import('./oracle');
    const base = t.file('d-base.vhdx');
    await createDynamicVhdx(base, { virtualSize: SIZE, blockSize: MiB });
    const model = Buffer.alloc(SIZE);
    const b = await openVhdx(base, { writable: true });
    await b.write(0, Buffer.alloc(SIZE, 0x10));
    await b.close();
    model.fill(0x10);
    const child = t.file('d-child.avhdx');
    await createDifferencingVhdx(child, base, { blockSize: MiB });
    const d = await openVhdx(child, { writable: true });
    await d.write(4096, Buffer.alloc(8192, 0x21)); // block 0 partial: allocates block and sector bitmap
    Buffer.alloc(8192, 0x21).copy(model, 4096);
    await d.flush();
    const pre = readFileSync(child);
    const modelBefore = Buffer.from(model);
    await d.write(3 * MiB + 512, Buffer.alloc(1024, 0x22)); // block 3 partial: a fresh block, bits in the same bitmap
    Buffer.alloc(1024, 0x22).copy(model, 3 * MiB + 512);
    await d.flush();
    const post = readFileSync(child);
    await d.close();
    // Crash image: everything that existed before the second write, except the log, as it was.
    const crashed = Buffer.from(post);
    pre.copy(crashed, 0, 0, MiB);
    pre.copy(crashed, 2 * MiB, 2 * MiB, pre.length);
    const file = t.file('d-crashed.avhdx');
    writeFileSync(file, crashed);

    const stale = await openVhdx(file, { replayLog: false }).catch((e: unknown) => e);
    expect(stale).toBeInstanceOf(VhdxError);
    const r = await openVhdx(file);
    expect(firstDifference(await r.read(0, SIZE), model)).toBe(-1);
    await r.close();
    // Without the log the second write is invisible: the test image really lost its metadata.
    const withoutLog = Buffer.from(crashed);
    withoutLog.fill(0, MiB, 2 * MiB);
    writeFileSync(t.file('d-nolog.avhdx'), withoutLog);
    const nolog = await openVhdx(t.file('d-nolog.avhdx'));
    expect(firstDifference(await nolog.read(0, SIZE), modelBefore)).toBe(-1);
    await nolog.close();

    const w = await openVhdx(file, { writable: true });
    await w.close();
    expect(firstDifference(pyvhdiRaw([file, base], t.dir), model)).toBe(-1);
  });
});
