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

const CS = 64 * 1024;
let f: Fixture;
let disk: Buffer;
let pointId: string;

beforeAll(async () => {
  f = await startFixture({ defaultChunkSize: CS, encoderThreads: 0, createChunkFolders: false });
  disk = randomDisk(40 * CS + 1536, 7); // a short last slot (VHDX sizes are whole sectors), zero pages, several all-zero chunks
  disk.fill(0, 5 * CS, 9 * CS);
  pointId = (await backup(f.repo, 'vm', disk)).pointId;
});
afterAll(() => f.close());

const sources = (): Array<[string, ChunkSource]> => [
  ['repository', repositoryChunkSource(f.repo, 'vm', pointId, 'disk0')],
  ['storage API', storageApiChunkSource(f.agent, { dataSource: 'vm', pointId }, 'disk0')],
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
