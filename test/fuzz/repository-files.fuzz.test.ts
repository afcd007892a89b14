// Damaged manifest and index files, fuzzed: bit flips, truncation, appended garbage, absurd
// sizes and counts, wrong magic, huge and deeply nested JSON. Reading them through the repository
// (listPoints, getPoint, openDiskStream, verifyRepository) gives a RepositoryError or a verify
// report naming them: never another exception, a hang, wrong bytes, or memory in proportion to a
// claimed size.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { compress } from 'zstd-napi';
import { RepositoryError, verifyRepository } from '../../repository';
import { openDiskStream } from '../../recovery';
import type { Repository, RecoveryPointManifest } from '../../repository';
import { backup, randomDisk, tempRepo } from '../repository/support';

const SEED = 7_2026;
const CS = 64 * 1024;
const DS = 'vm1';

let repo: Repository;
let disk1: Buffer;
let disk2: Buffer;
let p1: RecoveryPointManifest;
let p2: RecoveryPointManifest;
const originals = new Map<string, Buffer>();

beforeAll(async () => {
  repo = await tempRepo();
  disk1 = randomDisk(6 * CS + 1000, 11);
  p1 = await backup(repo, DS, disk1);
  disk2 = Buffer.from(disk1);
  disk2.fill(7, CS, CS + 100);
  p2 = await backup(repo, DS, disk2, { base: p1.pointId, changedSlots: [1] });
  for (const f of files()) originals.set(f, await fs.readFile(f));
});

afterAll(async () => {
  await repo?.close();
  if (repo) await fs.rm(repo.root, { recursive: true, force: true });
});

function files(): string[] {
  return [
    path.join(path.dirname(repo.indexPath(DS, p1.pointId, 'disk0')), 'manifest.json'),
    repo.indexPath(DS, p1.pointId, 'disk0'),
    path.join(path.dirname(repo.indexPath(DS, p2.pointId, 'disk0')), 'manifest.json'),
    repo.indexPath(DS, p2.pointId, 'disk0'),
  ];
}

async function restoreAll(): Promise<void> {
  for (const [f, b] of originals) await fs.writeFile(f, b);
}

/** A call that must settle within `ms`. */
function bounded<T>(what: string, p: Promise<T>, ms = 15_000): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`HANG: ${what} did not settle in ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

/** Runs fn; a RepositoryError is a refusal (fine), anything else is a failure of the property. */
async function refusesOrWorks<T>(what: string, fn: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; err: RepositoryError }> {
  try {
    return { ok: true, value: await bounded(what, fn()) };
  } catch (err) {
    if (err instanceof RepositoryError) return { ok: false, err };
    throw new Error(`${what}: ${(err as Error).name}: ${(err as Error).message}`);
  }
}

async function readStream(s: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

type Mutation = (b: Buffer, isIndex: boolean) => Buffer;

const u64 = fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.constantFrom(0n, 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 40n));
const u32 = fc.oneof(fc.nat(), fc.constantFrom(0, 1, 0xffffffff, 2 ** 31, 65535, 65537));

const binaryMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 7 })), { minLength: 1, maxLength: 8 }).map((flips) => (b: Buffer) => {
    const c = Buffer.from(b);
    for (const [pos, bit] of flips) c[pos % c.length] ^= 1 << bit;
    return c;
  }),
  fc.nat().map((n) => (b: Buffer) => b.subarray(0, n % b.length)),
  fc.uint8Array({ minLength: 1, maxLength: 200 }).map((g) => (b: Buffer) => Buffer.concat([b, Buffer.from(g)])),
  fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 64 })).map(([pos, g]) => (b: Buffer) => {
    const c = Buffer.from(b);
    Buffer.from(g).copy(c, pos % c.length);
    return c;
  }),
  // index header fields set to absurd values (chunk size, virtual size, slot count), wrong magic/version
  fc.tuple(fc.option(u32), fc.option(u64), fc.option(u64), fc.boolean(), fc.option(u32)).map(([cs, vs, count, magic, version]) => (b: Buffer, isIndex: boolean) => {
    if (!isIndex || b.length < 64) return Buffer.from(b);
    const c = Buffer.from(b);
    if (cs !== null) c.writeUInt32LE(cs >>> 0, 12);
    if (vs !== null) c.writeBigUInt64LE(vs, 16);
    if (count !== null) c.writeBigUInt64LE(count, 24);
    if (magic) c.write('HVPFIDX2', 0, 'latin1');
    if (version !== null) c.writeUInt32LE(version >>> 0, 8);
    return c;
  }),
  // consistent absurd header: the count matches the claimed size, the file does not
  fc.tuple(fc.bigInt({ min: 1n, max: 2n ** 53n - 1n }), fc.constantFrom(1, 512, 65536, 2 ** 31)).map(([vs, cs]) => (b: Buffer, isIndex: boolean) => {
    if (!isIndex) return Buffer.from(b);
    const c = Buffer.from(b);
    c.writeUInt32LE(cs, 12);
    c.writeBigUInt64LE(vs, 16);
    c.writeBigUInt64LE((vs + BigInt(cs) - 1n) / BigInt(cs), 24);
    return c;
  }),
);

const absurdNumber = fc.oneof(fc.constantFrom(-1, 0, 1.5, 2 ** 53, 2 ** 62, 1e308, Number.MAX_SAFE_INTEGER, '65536', null, true, [], {}), fc.integer(), fc.double());
const jsonMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.tuple(fc.constantFrom('virtualSize', 'chunkSize', 'totalChunks', 'changedChunks', 'addedBytes', 'indexDigest', 'diskId', 'fileName'), fc.oneof(absurdNumber, fc.string({ maxLength: 20 }), fc.constantFrom('../../x', 'disk0/../..', '0'.repeat(64), 'DISK0'))).map(([k, v]) => (b: Buffer) => {
    const m = JSON.parse(b.toString('utf8'));
    m.disks[0][k] = v;
    return Buffer.from(JSON.stringify(m));
  }),
  fc.tuple(fc.constantFrom('format', 'pointId', 'dataSource', 'disks', 'ownedBytes', 'vm', 'kind', 'createdAt'), fc.oneof(absurdNumber, fc.string({ maxLength: 20 }), fc.constantFrom([null], [1, 2], [[]], 'hvprotect-point/2', '../x', undefined))).map(([k, v]) => (b: Buffer) => {
    const m = JSON.parse(b.toString('utf8'));
    m[k] = v;
    return Buffer.from(JSON.stringify(m));
  }),
  fc.constantFrom<Mutation>(
    () => Buffer.from('null'),
    () => Buffer.from('[]'),
    () => Buffer.from('"hvprotect-point/1"'),
    () => Buffer.from(''),
    () => Buffer.from('\u0000'.repeat(100)),
    // deeply nested JSON
    (b) => Buffer.from(b.toString('utf8').replace('"vm": {', `"vm": {"x":${'['.repeat(200_000)}${']'.repeat(200_000)},`)),
    () => Buffer.from('['.repeat(500_000) + ']'.repeat(500_000)),
    // a disk list claiming a million disks
    (b) => {
      const m = JSON.parse(b.toString('utf8'));
      m.disks = Array.from({ length: 100_000 }, () => m.disks[0]);
      return Buffer.from(JSON.stringify(m));
    },
  ),
);

describe('damaged manifest and index files', () => {
  afterEach(restoreAll);

  it('give RepositoryErrors or verify reports, never crashes, hangs or wrong bytes', async () => {
    let peak = 0;
    const base = process.memoryUsage();
    const target = fc.nat(3);
    const mutation = fc.oneof(binaryMutation, jsonMutation);
    await fc.assert(
      fc.asyncProperty(target, mutation, fc.boolean(), async (t, mutate, alsoOther) => {
        await restoreAll();
        const all = files();
        const file = all[t];
        const isIndex = file.endsWith('.fidx');
        let damaged: Buffer;
        try {
          damaged = mutate(originals.get(file)!, isIndex);
        } catch {
          return; // a JSON mutation on an index file: nothing to do
        }
        await fs.writeFile(file, damaged);
        if (alsoOther) {
          const other = all[(t + 1) % 4];
          const b = Buffer.from(originals.get(other)!);
          b[b.length - 1] ^= 0x40;
          await fs.writeFile(other, b);
        }
        const changed = !damaged.equals(originals.get(file)!) || alsoOther;

        await refusesOrWorks('listPoints', () => repo.listPoints(DS));
        for (const [p, expected] of [[p1, disk1], [p2, disk2]] as const) {
          await refusesOrWorks('getPoint', () => repo.getPoint(DS, p.pointId));
          const whole = await refusesOrWorks('openDiskStream', async () => readStream((await openDiskStream(repo, DS, p.pointId, 'disk0')).stream));
          // A restore that succeeds hands out exactly the bytes that were backed up.
          if (whole.ok) expect(whole.value.equals(expected)).toBe(true);
          const part = await refusesOrWorks('openDiskStream range', async () => readStream((await openDiskStream(repo, DS, p.pointId, 'disk0', { offset: CS - 10, length: 100 })).stream));
          if (part.ok) expect(part.value.equals(expected.subarray(CS - 10, CS + 90))).toBe(true);
        }
        const report = await refusesOrWorks('verifyRepository', () => verifyRepository(repo, { readData: true }));
        if (report.ok && changed && isIndex && !report.value.ok) {
          expect(report.value.damagedIndexes.length + report.value.damagedChunks.length).toBeGreaterThan(0);
        }
        if (!report.ok) expect(report.err.code).toBe('CORRUPT');
        const m = process.memoryUsage();
        peak = Math.max(peak, m.heapUsed + m.arrayBuffers - base.heapUsed - base.arrayBuffers);
      }),
      { seed: SEED, numRuns: 250 },
    );
    // Claimed sizes up to 2^64 never turned into allocations (the disks here are 400 kB).
    expect(peak).toBeLessThan(512 * 1024 * 1024);
  });

  it('a damaged index is named by verify, and its restore refused', async () => {
    const idx = repo.indexPath(DS, p2.pointId, 'disk0');
    const b = Buffer.from(originals.get(idx)!);
    b[64 + 5] ^= 1;
    await fs.writeFile(idx, b);
    const report = await verifyRepository(repo);
    expect(report.ok).toBe(false);
    expect(report.damagedIndexes).toEqual([expect.objectContaining({ pointId: p2.pointId, diskId: 'disk0' })]);
    await expect(openDiskStream(repo, DS, p2.pointId, 'disk0').then((s) => readStream(s.stream))).rejects.toMatchObject({ code: 'CORRUPT' });
  });

  it('a manifest of a wrong size or shape is CORRUPT, not read whole', async () => {
    const manifest = files()[2];
    const handle = await fs.open(manifest, 'r+');
    await handle.truncate(64 * 1024 * 1024); // sparse: claims 64 MiB
    await handle.close();
    const before = process.memoryUsage().arrayBuffers;
    await expect(repo.getPoint(DS, p2.pointId)).rejects.toMatchObject({ code: 'CORRUPT' });
    await expect(repo.listPoints(DS)).rejects.toMatchObject({ code: 'CORRUPT' });
    await expect(verifyRepository(repo)).rejects.toMatchObject({ code: 'CORRUPT' });
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(32 * 1024 * 1024);
    for (const text of ['null', '{"format":"hvprotect-point/1","pointId":"x","dataSource":"vm1","disks":[null],"ownedBytes":0}']) {
      await fs.writeFile(manifest, text);
      await expect(repo.getPoint(DS, p2.pointId)).rejects.toMatchObject({ code: 'CORRUPT' });
      await expect(verifyRepository(repo)).rejects.toMatchObject({ code: 'CORRUPT' });
    }
  });

  it('damaged chunk files (absurd claimed sizes, a zstd bomb, bit flips) are CORRUPT without big allocations', async () => {
    // A chunk of point 1 that holds data (not all zero): slot 0.
    const idx = await fs.readFile(repo.indexPath(DS, p1.pointId, 'disk0'));
    const digest = idx.subarray(64, 96).toString('hex');
    const file = repo.chunks.pathOf(digest);
    const original = await fs.readFile(file);
    const zstdFrame = (claim: bigint) => {
      // magic, FHD = single segment + 8-byte content size, the size, then an empty raw last block
      const b = Buffer.alloc(4 + 1 + 8 + 3);
      b.writeUInt32LE(0xfd2fb528, 0);
      b[4] = 0xe0;
      b.writeBigUInt64LE(claim, 5);
      b.writeUIntLE(1, 13, 3);
      return b;
    };
    const chunkFile = (codec: number, rawLength: number, payload: Buffer) => {
      const h = Buffer.alloc(16);
      h.write('HVC1', 0, 'latin1');
      h[4] = codec;
      h.writeUInt32LE(rawLength, 8);
      h.writeUInt32LE(payload.length, 12);
      return Buffer.concat([h, payload]);
    };
    const bomb = compress(Buffer.alloc(256 * 1024 * 1024)); // a few kB that decode to 256 MiB
    const cases: Array<[string, Buffer]> = [
      ['frame claiming 2^40 bytes', chunkFile(1, CS, zstdFrame(2n ** 40n))],
      ['frame claiming 4 GiB', chunkFile(1, CS, zstdFrame(2n ** 32n - 1n))],
      ['header claiming 4 GiB', chunkFile(1, 0xffffffff, zstdFrame(2n ** 32n - 1n))],
      ['zstd bomb', chunkFile(1, CS, bomb)],
      ['raw length 0', chunkFile(0, 0, Buffer.alloc(0))],
      ['stored length lies', (() => { const c = Buffer.from(original); c.writeUInt32LE(0xffffffff, 12); return c; })()],
      ['unknown codec', (() => { const c = Buffer.from(original); c[4] = 0x7f; return c; })()],
      ['a huge file', Buffer.concat([original, Buffer.alloc(9 * 1024 * 1024)])],
      ['bit flip in the payload', (() => { const c = Buffer.from(original); c[c.length - 3] ^= 0x10; return c; })()],
    ];
    try {
      for (const [what, content] of cases) {
        await fs.writeFile(file, content);
        const before = process.memoryUsage().arrayBuffers;
        const r = await refusesOrWorks(`restore with ${what}`, async () => readStream((await openDiskStream(repo, DS, p1.pointId, 'disk0')).stream));
        expect({ what, ok: r.ok, code: r.ok ? undefined : r.err.code }).toEqual({ what, ok: false, code: 'CORRUPT' });
        expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * 1024 * 1024);
        const report = await verifyRepository(repo, { readData: true });
        expect({ what, damaged: report.damagedChunks.map((d) => [d.digest, d.problem]) }).toEqual({ what, damaged: [[digest, 'corrupt']] });
      }
    } finally {
      await fs.writeFile(file, original);
    }
  });

  it('the undamaged repository verifies clean', async () => {
    const report = await verifyRepository(repo, { readData: true });
    expect(report.ok).toBe(true);
  });
});
