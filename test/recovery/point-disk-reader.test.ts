// recovery's PointDiskReader over both chunk sources: random reads equal the disk backed up, a
// chunk that does not match its digest is refused naming it, the cache stays in its bound, and a
// whole-disk restore (raw and VHDX) writes the disk's bytes.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { PointDiskReader, openDiskWriter, repositoryChunkSource, restorePointDisk, storageApiChunkSource, type ChunkSource } from '../../recovery';
import { openVhdx } from '../../vhdx';
import { backup, randomDisk } from '../repository/support';
import { startFixture, tempDir, type Fixture } from '../storage-api/support';
import type { StorageClient } from '../../storage-api/client';
import { decodeChunkRecords } from '../../recovery/chunk-decoder';

const CS = 64 * 1024;
let f: Fixture;
let disk: Buffer;
let pointId: string;
let agent: StorageClient; // the agent's client under a restore grant for the point

beforeAll(async () => {
  f = await startFixture({ defaultChunkSize: CS, encoderThreads: 0, createChunkFolders: false });
  disk = randomDisk(40 * CS + 1536, 7); // a short last slot (VHDX sizes are whole sectors), zero pages, several all-zero chunks
  disk.fill(0, 5 * CS, 9 * CS);
  pointId = (await backup(f.repo, 'vm', disk)).pointId;
  agent = (await f.restoreJob({ dataSource: 'vm', pointId })).agent;
});
afterAll(() => f.close());

const sources = (): Array<[string, ChunkSource]> => [
  ['repository', repositoryChunkSource(f.repo, 'vm', pointId, 'disk0')],
  ['storage API', storageApiChunkSource(agent, { dataSource: 'vm', pointId }, 'disk0')],
];

test.each([0, 1])('random reads equal the disk backed up (source %#)', async (i) => {
  const reader = await PointDiskReader.open(sources()[i][1], { cacheBytes: 4 * CS });
  expect(reader.virtualSize).toBe(disk.length);
  await fc.assert(
    fc.asyncProperty(fc.nat(disk.length), fc.nat(3 * CS), async (offset, len) => {
      const length = Math.min(len, disk.length - offset);
      expect((await reader.read(offset, length)).equals(disk.subarray(offset, offset + length))).toBe(true);
    }),
    { numRuns: 60 },
  );
  // The cache never holds more than its bound; zero slots are never fetched.
  expect((reader as unknown as { cachedBytes: number }).cachedBytes).toBeLessThanOrEqual(4 * CS);
  await expect(reader.read(disk.length - 1, 2)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
});

test('a small read fetches only the chunks under it, and a second read of them none', async () => {
  const reader = await PointDiskReader.open(sources()[1][1]);
  await reader.read(3 * CS - 10, 20);
  expect(reader.stats).toMatchObject({ chunksFetched: 2, bytesFetched: 2 * CS });
  await reader.read(3 * CS - 5, 10);
  expect(reader.stats.chunksFetched).toBe(2);
  await reader.read(6 * CS, 100); // an all-zero slot
  expect(reader.stats.chunksFetched).toBe(2);
});

test('a chunk that does not match its digest is refused, naming chunk, point and offset', async () => {
  const real = sources()[1][1];
  const lying: ChunkSource = {
    ...real,
    readChunk: async (d) => {
      const b = Buffer.from(await real.readChunk(d));
      b[100] ^= 1;
      return b;
    },
  };
  const reader = await PointDiskReader.open(lying);
  await expect(reader.read(2 * CS, 10)).rejects.toThrow(new RegExp(`chunk [0-9a-f]{64} of vm/${pointId}/disk0 \\(slot 2, disk offset ${2 * CS}\\) does not match its digest`));
  const short: ChunkSource = { ...real, readChunk: async (d) => (await real.readChunk(d)).subarray(1) };
  await expect((await PointDiskReader.open(short)).read(0, 1)).rejects.toThrow(/has 65535 bytes, the slot 65536/);
});

test.each(['raw', 'vhdx'] as const)('a whole-disk restore (%s) writes the disk, resuming where a retry left off', async (format) => {
  const dir = await tempDir('hvp-restore-');
  const file = path.join(dir, `d.${format}`);
  const reader = await PointDiskReader.open(sources()[1][1]);
  // First attempt stops after slot 12 (as a heartbeat would record), the retry resumes there.
  const w1 = await openDiskWriter(file, format, disk.length, false);
  const first = await restorePointDisk(reader, w1, { inFlight: 4, progressEverySlots: 1, onProgress: (p) => { if (p.nextSlot >= 12) throw Object.assign(new Error('stop'), { at: p.nextSlot }); } }).catch((e) => e.at as number);
  await w1.close();
  expect(first).toBeGreaterThanOrEqual(12);
  const w2 = await openDiskWriter(file, format, disk.length, true);
  const done = await restorePointDisk(reader, w2, { fromSlot: first as number });
  await w2.close();
  expect(done.nextSlot).toBe(reader.slotCount);
  let bytes: Buffer;
  if (format === 'raw') bytes = await fs.readFile(file);
  else {
    const v = await openVhdx(file);
    bytes = Buffer.alloc(disk.length);
    await v.readInto(bytes, 0);
    await v.close();
  }
  expect(bytes.equals(disk)).toBe(true);
  await fs.rm(dir, { recursive: true, force: true });
});

// ---- whole-disk reads in batches (POST /chunks/read, decoded and hashed on worker threads) ----

test('slotsInOrder over the storage API reads batches: the disk in order (zero slots too), one request per batch', async () => {
  const source = sources()[1][1];
  expect(source.readChunks).toBeDefined();
  let requests = 0;
  const counting: ChunkSource = { ...source, readChunk: async () => { throw new Error('not one at a time'); }, readChunks: async (d) => { requests++; return source.readChunks!(d); } };
  const reader = await PointDiskReader.open(counting);
  for (const skipZero of [false, true]) {
    const out = Buffer.alloc(disk.length);
    let last = -1;
    for await (const { slot, data } of reader.slotsInOrder(0, reader.slotCount, { inFlight: 8, skipZero })) {
      expect(slot).toBeGreaterThan(last);
      last = slot;
      data.copy(out, slot * CS);
    }
    expect(out.equals(disk)).toBe(true);
  }
  expect(requests).toBeLessThanOrEqual(2 * Math.ceil(reader.slotCount / 16) + 4); // not one per chunk
});

test('concurrent batched reads each get their own chunks (the server answers from reused memory)', async () => {
  const reader = await PointDiskReader.open(sources()[1][1]);
  const slots = Array.from({ length: reader.slotCount }, (_, s) => s).filter((s) => !reader.isZeroSlot(s));
  const digestOf = (s: number) => (reader as unknown as { digestOf(s: number): Buffer }).digestOf(s).toString('hex');
  // Batches of 16 chunks (1 MiB, from the pool), many at once, each from another place.
  const batches = Array.from({ length: slots.length - 15 }, (_, i) => slots.slice(i, i + 16));
  for (let round = 0; round < 2; round++) {
    await Promise.all(batches.map(async (b) => {
      const raws = await decodeChunkRecords(await agent.readChunks(b.map(digestOf)), b.map(digestOf), 'vm/p/disk0');
      b.forEach((s, i) => expect(raws[i].equals(disk.subarray(s * CS, s * CS + raws[i].length))).toBe(true));
    }));
  }
});

test('over an encrypted repository the batched read unseals on the server and restores bit for bit', async () => {
  const { EncryptionKey } = await import('../../repository/encryption');
  const e = await startFixture({ defaultChunkSize: CS, encoderThreads: 0, createChunkFolders: false, encryptionKey: EncryptionKey.generate().key });
  try {
    const id = (await backup(e.repo, 'vm', disk)).pointId;
    const reader = await PointDiskReader.open(storageApiChunkSource((await e.restoreJob({ dataSource: 'vm', pointId: id })).agent, { dataSource: 'vm', pointId: id }, 'disk0'));
    const out = Buffer.alloc(disk.length);
    for await (const { slot, data } of reader.slotsInOrder(0, reader.slotCount, { skipZero: true })) data.copy(out, slot * CS);
    expect(out.equals(disk)).toBe(true);
  } finally {
    await e.close();
  }
});

describe('a damaged or lying chunk read response is refused, naming the chunk', () => {
  let digests: string[];
  let body: Buffer;
  beforeAll(async () => {
    const reader = await PointDiskReader.open(sources()[0][1]);
    const slots = [0, 1, 2, 3].filter((s) => !reader.isZeroSlot(s));
    digests = slots.map((s) => (reader as unknown as { digestOf(s: number): Buffer }).digestOf(s).toString('hex'));
    body = await agent.readChunks(digests);
  });
  const damaged = (fn: (b: Buffer) => Buffer) => fn(Buffer.from(body));

  test('the genuine response decodes to the chunks', async () => {
    const raws = await decodeChunkRecords(Buffer.from(body), digests, 'vm/p/disk0');
    expect(Buffer.concat(raws).equals(disk.subarray(0, raws.length * CS))).toBe(true);
  });
  test.each([
    ['a flipped payload byte', (b: Buffer) => { b[b.length - 5] ^= 1; return b; }, /chunk [0-9a-f]{64}: (does not match its digest|cannot decode)/],
    ['records in another order', (b: Buffer) => b, /the server sent [0-9a-f]{64} in its place/],
    ['a truncated body', (b: Buffer) => b.subarray(0, b.length - 100), /runs past the response/],
    ['trailing bytes', (b: Buffer) => Buffer.concat([b, Buffer.alloc(7)]), /7 bytes after the last record/],
    ['a header claiming 4 GiB', (b: Buffer) => { b.writeUInt32LE(0xffffffff, 40); return b; }, /header claims 4294967295 bytes/],
    ['bad magic', (b: Buffer) => { b[32] = 0x58; return b; }, /bad magic/],
  ])('%s', async (_what, fn, error) => {
    const asked = _what === 'records in another order' ? [...digests].reverse() : digests;
    await expect(decodeChunkRecords(damaged(fn), asked, 'vm/p/disk0')).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(error) });
  });
  test('the route refuses too many digests, and names a missing chunk', async () => {
    await expect(agent.readChunks(Array.from({ length: 257 }, () => digests[0]))).rejects.toMatchObject({ status: 400 });
    await expect(f.admin.readChunks([digests[0], 'ab'.repeat(32)])).rejects.toMatchObject({ status: 404, message: expect.stringMatching(/chunk abab[0-9a-f]* is missing/) });
  });
  test('an agent reads only chunks of the point its restore grant is for', async () => {
    await expect(f.agent.readChunks(digests)).rejects.toMatchObject({ status: 403 }); // no grant
    const other = (await backup(f.repo, 'vm2', randomDisk(4 * CS, 99))).pointId;
    const otherAgent = (await f.restoreJob({ dataSource: 'vm2', pointId: other })).agent;
    // vm2's grant does not reach vm's chunks, even one among its own; the route names the chunk.
    const mine = await PointDiskReader.open(storageApiChunkSource(otherAgent, { dataSource: 'vm2', pointId: other }, 'disk0'));
    const own = (mine as unknown as { digestOf(s: number): Buffer }).digestOf(0).toString('hex');
    expect((await otherAgent.readChunks([own])).length).toBeGreaterThan(48);
    await expect(otherAgent.readChunks([own, digests[0]])).rejects.toMatchObject({ status: 403, message: expect.stringMatching(new RegExp(`chunk ${digests[0]} is not part of vm2/${other}`)) });
    const backupAgent = (await f.backupJob('vm3')).agent;
    await expect(backupAgent.readChunks(digests)).rejects.toMatchObject({ status: 403 });
  });
});
