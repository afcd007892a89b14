// Hostile guest disks: a damaged MFT record, a directory index that loops, a runlist pointing
// past the volume, a FAT chain that loops, an ext4 extent past the volume, absurd partition
// tables; then random damage to the metadata of each file system (fast-check). Every one is a
// GuestFsError naming volume, path and defect; never a hang, a crash or a huge allocation.
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { GuestFsError, lookup, openFileSystem, openVolumes, readPartitionTable, walk, type GuestFileSystem } from '../../guestfs';
import { makeGuestImages, type GuestImages } from './images';
import { bufferAccess } from './support';

let img: GuestImages;
let ntfs: Buffer;
let ext4: Buffer;
let fat: Buffer;
let gpt: Buffer;
beforeAll(() => {
  img = makeGuestImages();
  ntfs = readFileSync(img.ntfs);
  ext4 = readFileSync(img.ext4);
  fat = readFileSync(img.fat32);
  gpt = readFileSync(img.gptDisk);
});
afterAll(() => rmSync(img.dir, { recursive: true, force: true }));

/** Opens, walks every folder and reads every file (at most `cap` bytes each) within a time bound. */
async function readEverything(buf: Buffer, volume: string, cap = 8 * 1024 * 1024): Promise<{ entries: number; largestRead: number }> {
  const dev = bufferAccess(buf);
  const work = (async () => {
    const fs = await openFileSystem(dev, volume);
    if (!fs) return 0;
    let n = 0;
    for await (const e of walk(fs, await fs.root())) {
      n++;
      if (e.type !== 'file' || e.unreadable) continue;
      let got = 0;
      for await (const p of fs.content(e)) if ((got += p.length) >= cap) break;
    }
    return n;
  })();
  let timer: NodeJS.Timeout | undefined;
  const entries = await Promise.race([work, new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`${volume}: still reading after 20 s (a hang)`)), 20_000)))]).finally(() => clearTimeout(timer));
  return { entries, largestRead: dev.largestRead };
}

async function refusal(p: Promise<unknown>): Promise<GuestFsError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof GuestFsError) return err;
    throw err;
  }
  throw new Error('expected a GuestFsError, it succeeded');
}

// ---- NTFS helpers: where a file's MFT record is, and editing it with its fixups kept right ----

function ntfsGeometry(b: Buffer) {
  const cluster = b.readUInt16LE(11) * b[13];
  return { cluster, mft: Number(b.readBigUInt64LE(48)) * cluster, record: 1024 };
}

function editMftRecord(b: Buffer, n: number, edit: (rec: Buffer) => void): void {
  const g = ntfsGeometry(b);
  const rec = b.subarray(g.mft + n * g.record, g.mft + (n + 1) * g.record); // small volumes: $MFT's first run holds these
  const usa = rec.readUInt16LE(4);
  const saved: number[] = [];
  for (let i = 1; i < rec.readUInt16LE(6); i++) {
    saved.push(rec.readUInt16LE(i * 512 - 2));
    rec.writeUInt16LE(rec.readUInt16LE(usa + i * 2), i * 512 - 2);
  }
  edit(rec);
  saved.forEach((usn, i) => {
    rec.writeUInt16LE(rec.readUInt16LE((i + 1) * 512 - 2), usa + (i + 1) * 2);
    rec.writeUInt16LE(usn, (i + 1) * 512 - 2);
  });
}

function attributeAt(rec: Buffer, type: number): number {
  for (let o = rec.readUInt16LE(20); rec.readUInt32LE(o) !== 0xffffffff; o += rec.readUInt32LE(o + 4)) if (rec.readUInt32LE(o) === type) return o;
  throw new Error(`no attribute 0x${type.toString(16)}`);
}

async function ntfsId(b: Buffer, p: string): Promise<number> {
  return (await lookup((await openFileSystem(bufferAccess(b), 'ntfs'))!, p)).id;
}

test('NTFS: a damaged MFT record (torn sector) is named with its file', async () => {
  const b = Buffer.from(ntfs);
  const n = await ntfsId(b, '/sub/hello.txt');
  const g = ntfsGeometry(b);
  b[g.mft + n * g.record + 510] ^= 0xff; // the update sequence number at the end of sector 0
  const fs = (await openFileSystem(bufferAccess(b), 'vm1-disk0p2'))!;
  // Its folder still lists, the entry marked with the defect; reading it is refused naming it.
  const entry = await lookup(fs, '/sub/hello.txt');
  expect(entry.unreadable).toBe(`MFT record ${n}: damaged (update sequence mismatch in sector 0: a torn write)`);
  const err = await refusal((async () => { for await (const _ of fs.content(entry)) void _; })());
  expect(err.message).toBe(`vm1-disk0p2:/sub/hello.txt: MFT record ${n}: damaged (update sequence mismatch in sector 0: a torn write)`);
  // The rest of the volume still reads.
  expect((await lookup(fs, '/sub/random.bin')).size).toBe(300000);
});

test('NTFS: a directory index that reaches one node twice (a loop) is refused', async () => {
  const b = Buffer.from(ntfs);
  // The 400-name folder's index has an interior INDX node (it has children): point two of its
  // children at the same node.
  let changed = 0;
  for (let at = 0; at + 4096 <= b.length && !changed; at += 4096) {
    if (b.toString('latin1', at, at + 4) !== 'INDX') continue;
    const rec = b.subarray(at, at + 4096);
    const usa = rec.readUInt16LE(4);
    const saved: number[] = [];
    for (let i = 1; i < rec.readUInt16LE(6); i++) {
      saved.push(rec.readUInt16LE(i * 512 - 2));
      rec.writeUInt16LE(rec.readUInt16LE(usa + i * 2), i * 512 - 2);
    }
    if (rec[24 + 12] & 1) {
      const vcns: number[] = [];
      for (let o = 24 + rec.readUInt32LE(24); ; o += rec.readUInt16LE(o + 8)) {
        if (rec.readUInt32LE(o + 12) & 1) vcns.push(o + rec.readUInt16LE(o + 8) - 8);
        if (rec.readUInt32LE(o + 12) & 2) break;
      }
      rec.writeBigUInt64LE(rec.readBigUInt64LE(vcns[0]), vcns[1]);
      changed = vcns.length;
    }
    saved.forEach((usn, i) => {
      rec.writeUInt16LE(rec.readUInt16LE((i + 1) * 512 - 2), usa + (i + 1) * 2);
      rec.writeUInt16LE(usn, (i + 1) * 512 - 2);
    });
  }
  expect(changed).toBeGreaterThan(1);
  const fs = (await openFileSystem(bufferAccess(b), 'p2'))!;
  const err = await refusal(fs.list(await lookup(fs, '/big')));
  expect(err.message).toMatch(/^p2:\/big: \$I30 index loops: the node at VCN \d+ is reached twice$/);
});

test('NTFS: a runlist pointing past the volume is refused naming the file', async () => {
  const b = Buffer.from(ntfs);
  const n = await ntfsId(b, '/sub/random.bin');
  editMftRecord(b, n, (rec) => {
    const a = attributeAt(rec, 0x80);
    const run = a + rec.readUInt16LE(a + 32);
    const h = rec[run];
    rec[run + (h & 15) + (h >> 4)] = 0x3f; // the top byte of the first run's cluster offset
  });
  const fs = (await openFileSystem(bufferAccess(b), 'p2'))!;
  const err = await refusal((async () => { for await (const _ of fs.content(await lookup(fs, '/sub/random.bin'))) void _; })());
  expect(err.message).toMatch(/^p2:\/sub\/random\.bin: MFT record \d+, attribute 0x80: run of \d+ clusters at cluster \d+ lies outside the volume's \d+ clusters$/);
});

test('FAT: a cluster chain that loops is refused naming the file', async () => {
  const b = Buffer.from(fat);
  const fs = (await openFileSystem(bufferAccess(b), 'p1'))!;
  const e = await lookup(fs, '/sub/random.bin');
  const fatStart = b.readUInt16LE(14) * b.readUInt16LE(11);
  b.writeUInt32LE(e.id, fatStart + (e.id + 3) * 4); // the 4th cluster's next is the first
  const fs2 = (await openFileSystem(bufferAccess(b), 'p1'))!;
  const err = await refusal((async () => { for await (const _ of fs2.content(await lookup(fs2, '/sub/random.bin'))) void _; })());
  expect(err.message).toBe(`p1:/sub/random.bin: cluster chain loops back to cluster ${e.id}`);
});

test('ext4: an extent pointing past the volume is refused naming the file', async () => {
  const b = Buffer.from(ext4);
  // debugfs says where the inode is; its i_block starts 40 bytes in: header, then the first extent.
  const imap = execFileSync('debugfs', ['-R', 'imap /sub/random.bin', img.ext4], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(imap)!;
  const at = Number(m[1]) * 1024 + parseInt(m[2], 16) + 40 + 12;
  b.writeUInt16LE(0xffff, at + 6); // start (high 16 bits)
  const fs = (await openFileSystem(bufferAccess(b), 'p3'))!;
  const err = await refusal((async () => { for await (const _ of fs.content(await lookup(fs, '/sub/random.bin'))) void _; })());
  expect(err.message).toMatch(/^p3:\/sub\/random\.bin: extent of \d+ blocks at block \d+ runs past the volume's 16384 blocks$/);
});

test('absurd partition tables: a billion GPT entries, a partition past the disk, an EBR chain that loops', async () => {
  const g = Buffer.from(gpt);
  g.writeUInt32LE(1_000_000_000, 512 + 80);
  g.writeUInt32LE(0, 512 + 16);
  g.writeUInt32LE(crc32(g.subarray(512, 512 + 92)), 512 + 16);
  expect((await refusal(readPartitionTable(bufferAccess(g), 'vm1-disk0'))).message).toBe('vm1-disk0: partition table: GPT claims 1000000000 entries of 128 bytes (more than 1048576 bytes)');
  const mbr = readFileSync(img.mbrDisk);
  const past = Buffer.from(mbr);
  past.writeUInt32LE(0x7fffffff, 446 + 12);
  expect((await refusal(readPartitionTable(bufferAccess(past), 'd'))).message).toMatch(/^d: partition table: MBR entry 1: sectors 2048\+2147483647 past the end of the disk/);
  // EBR chain: first EBR -> +1 -> +2 -> +1 ...
  const loop = Buffer.from(mbr);
  const e = loop.readUInt32LE(462 + 8) * 512; // the extended partition's first EBR
  loop[e + 462 + 4] = 5;
  loop.writeUInt32LE(1, e + 462 + 8);
  loop.writeUInt32LE(1, e + 462 + 12);
  for (const [sector, next] of [[1, 2], [2, 1]]) {
    const at = e + sector * 512;
    loop.fill(0, at, at + 512);
    loop.writeUInt16LE(0xaa55, at + 510);
    loop[at + 462 + 4] = 5;
    loop.writeUInt32LE(next, at + 462 + 8);
    loop.writeUInt32LE(1, at + 462 + 12);
  }
  expect((await refusal(readPartitionTable(bufferAccess(loop), 'd'))).message).toMatch(/^d: partition table: extended partition: EBR chain loops back to sector \d+$/);
  // openVolumes hands the same refusal on.
  await expect(openVolumes(bufferAccess(g), 'vm1-disk0')).rejects.toBeInstanceOf(GuestFsError);
});

describe('random damage to metadata', () => {
  // Positions are spread evenly over each region (fc.double crowds near 0: most doubles are tiny).
  const SPREAD = 1 << 20;
  const regions = (name: string, b: Buffer): Array<[number, number]> => {
    if (name === 'ntfs') {
      const g = ntfsGeometry(b);
      return [[0, 512], [g.mft, g.mft + 600 * 1024]];
    }
    if (name === 'fat') {
      const fatStart = b.readUInt16LE(14) * 512;
      const data = fatStart + b[16] * b.readUInt32LE(36) * 512;
      return [[0, 512], [fatStart, fatStart + 8 * 1024], [data, data + 2048]]; // boot sector, the FAT in use, the root folder
    }
    // Superblock and group descriptors; the inodes in use (the first ~430 of group 0's inode table).
    const inodeTable = b.readUInt32LE(2048 + 8) * 1024;
    return [[1024, 3072], [inodeTable, inodeTable + 430 * b.readUInt16LE(1024 + 88)]];
  };
  test.each(['ntfs', 'ext4', 'fat'])('%s: every read either works or fails with a GuestFsError, in bounded time and memory', async (name) => {
    const base = name === 'ntfs' ? ntfs : name === 'ext4' ? ext4 : fat;
    const rs = regions(name, base);
    const clean = await readEverything(base, name);
    expect(clean.entries).toBeGreaterThan(400);
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(fc.nat(rs.length - 1), fc.noBias(fc.nat(SPREAD - 1)), fc.nat(255)), { minLength: 1, maxLength: 24 }), async (edits) => {
        const b = Buffer.from(base);
        for (const [r, where, byte] of edits) b[Math.min(rs[r][1] - 1, rs[r][0] + Math.floor((where / SPREAD) * (rs[r][1] - rs[r][0])))] = byte;
        try {
          const r = await readEverything(b, name);
          expect(r.largestRead).toBeLessThanOrEqual(64 * 1024 * 1024);
        } catch (err) {
          if (!(err instanceof GuestFsError)) throw err;
          expect(err.volume).toBe(name);
          expect(err.defect.length).toBeGreaterThan(5);
          refused++;
        }
      }),
      // A fixed seed: the same 40 damages every run (a random one found none now and then).
      { numRuns: 40, seed: 1814 },
    );
    expect(refused).toBeGreaterThan(0); // the damage is real: some of it is found
  });
});
