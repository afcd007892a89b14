// The partition-table and file-system readers against disks made by Debian's tools: every
// volume's listing equals The Sleuth Kit's `fls -r` (names, types, sizes), every file's bytes
// equal `icat`'s, and a sample equals what ntfs-3g (`ntfscat`), e2fsprogs (`debugfs`) and
// mtools (`mcopy`) read.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { lookup, openVolumes, readPartitionTable, type Volume } from '../../guestfs';
import { makeGuestImages, type GuestImages } from './images';
import { contentOf, fileAccess, fls, listingLines, walkAll } from './support';

let img: GuestImages;
beforeAll(() => {
  img = makeGuestImages();
});
afterAll(() => rmSync(img.dir, { recursive: true, force: true }));

test('GPT and MBR tables read as mmls reads them', async () => {
  const gpt = await readPartitionTable(fileAccess(img.gptDisk), 'gpt');
  expect(gpt.scheme).toBe('gpt');
  expect(gpt.partitions.map((p) => [p.number, p.start / 512, p.size / 512, p.name])).toEqual([
    [1, 2048, 81920, 'EFI system partition'],
    [2, 83968, 49152, 'Basic data partition'],
    [3, 133120, 32768, ''],
  ]);
  expect(gpt.partitions[0].type).toBe('c12a7328-f81f-11d2-ba4b-00a0c93ec93b');
  const mbr = await readPartitionTable(fileAccess(img.mbrDisk), 'mbr');
  expect(mbr.scheme).toBe('mbr');
  expect(mbr.partitions.map((p) => [p.number, p.start / 512, p.size / 512, p.type])).toEqual([
    [1, 2048, 81920, '0x0c'],
    [5, 86016, 32768, '0x83'],
  ]);
  // The same starts and lengths as The Sleuth Kit's mmls.
  for (const [disk, table] of [[img.gptDisk, gpt], [img.mbrDisk, mbr]] as const) {
    const mmls = execFileSync('mmls', [disk]).toString();
    for (const p of table.partitions) expect(mmls).toMatch(new RegExp(`${String(p.start / 512).padStart(10, '0')}\\s+\\d+\\s+${String(p.size / 512).padStart(10, '0')}`));
  }
});

describe.each([
  ['GPT disk', () => img.gptDisk, ['fat32 GUESTFAT', 'ntfs GUESTNTFS', 'ext4 guestext4']],
  ['MBR disk', () => img.mbrDisk, ['fat32 GUESTFAT', 'ext4 guestext4']],
])('%s', (_name, disk, expected) => {
  let volumes: Volume[];
  beforeAll(async () => {
    volumes = await openVolumes(fileAccess(disk()), 'disk0');
  });

  test('volumes: file system and label of each partition', () => {
    expect(volumes.map((v) => `${v.fileSystem?.type} ${v.fileSystem?.label}`)).toEqual(expected);
  });

  test('every listing equals fls -r; every file equals icat', async () => {
    for (const v of volumes) {
      const ours = await walkAll(v.fileSystem!);
      const theirs = fls(disk(), v.start / 512);
      expect(listingLines(ours)).toEqual(listingLines(theirs));
      const flsOf = new Map(theirs.map((e) => [e.path, e]));
      // Every file outside the 400-entry folder, and every 40th inside it.
      const sample = ours.filter((e) => e.type === 'file' && (!e.path.startsWith('/big/') || e.path.endsWith('0.txt')));
      expect(sample.length).toBeGreaterThan(10);
      for (const e of sample) {
        const f = flsOf.get(e.path.replace(/[\x00-\x1f]/g, '^'))!; // fls prints control characters as ^
        const icat = f.streamsOnly ? Buffer.alloc(0) : execFileSync('icat', ['-o', String(v.start / 512), disk(), f.inode], { maxBuffer: 64 * 1024 * 1024 });
        expect({ path: e.path, equal: (await contentOf(v.fileSystem!, e)).equals(icat) }).toEqual({ path: e.path, equal: true });
      }
    }
  });
});

test('NTFS: fragmented, sparse, hard-linked and Unicode-named files equal ntfscat; hard links counted; times from $STANDARD_INFORMATION', async () => {
  const [vol] = await openVolumes(fileAccess(img.ntfs), 'ntfs');
  const fs = vol.fileSystem!;
  for (const p of ['/frag/fragmented.bin', '/sparse.bin', '/sub/hello-hardlink.txt', '/sub/random.bin', '/Ünïcødé folder ✓/A file with a rather long name, more than 64 characters — ünïcødé.txt', '/empty.txt']) {
    const e = await lookup(fs, p);
    const ntfscat = execFileSync('ntfscat', [img.ntfs, p], { maxBuffer: 64 * 1024 * 1024 });
    expect({ p, equal: (await contentOf(fs, e)).equals(ntfscat) }).toEqual({ p, equal: true });
  }
  expect((await lookup(fs, '/sub/hello.txt')).links).toBe(2);
  expect((await lookup(fs, '/tiny.txt')).links).toBe(1);
  // The fragmented file really is in several runs (istat lists its clusters in pieces).
  const istat = execFileSync('istat', [img.ntfs, String((await lookup(fs, '/frag/fragmented.bin')).id)]).toString();
  expect(istat).toMatch(/Non-Resident/);
  const mtime = (await lookup(fs, '/sub/hello.txt')).mtime!;
  expect(Math.abs(mtime.getTime() - Date.now())).toBeLessThan(3600_000);
  // Names are case-insensitive for lookups on NTFS and FAT.
  expect((await lookup(fs, '/SUB/HELLO.TXT')).id).toBe((await lookup(fs, '/sub/hello.txt')).id);
});

test.each([
  ['extents and an htree directory', () => img.ext4],
  ['inline data', () => img.ext4Inline],
])('ext4 (%s): listing equals fls, files equal debugfs (icat for inline data), hard links and symlinks', async (_n, image) => {
  const [vol] = await openVolumes(fileAccess(image()), 'ext');
  const fs = vol.fileSystem!;
  expect(listingLines(await walkAll(fs))).toEqual(listingLines(fls(image(), 0)));
  for (const p of ['/sparse.bin', '/sub/random.bin', '/sub/hello-hardlink.txt', '/tiny.txt', '/big/file-0123.txt', '/Ünïcødé folder ✓/A file with a rather long name, more than 64 characters — ünïcødé.txt']) {
    const e = await lookup(fs, p);
    // debugfs 1.47's `cat` prints an inline file's whole 60-byte inline area whatever its size; icat stops at the size.
    const theirs = image() === img.ext4 ? execFileSync('debugfs', ['-R', `cat "${p}"`, image()], { stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 * 1024 * 1024 }) : execFileSync('icat', [image(), String(e.id)], { maxBuffer: 64 * 1024 * 1024 });
    expect({ p, equal: (await contentOf(fs, e)).equals(theirs) }).toEqual({ p, equal: true });
  }
  expect((await lookup(fs, '/sub/hello.txt')).links).toBe(2);
  const link = (await fs.list(await fs.root())).find((e) => e.name === 'link-to-hello')!;
  expect(link).toMatchObject({ type: 'symlink', target: 'sub/hello.txt' });
  if (image() === img.ext4) {
    // 400 entries in 1 KiB blocks: mke2fs indexed the folder (htree), as debugfs shows.
    expect(execFileSync('debugfs', ['-R', 'htree /big', image()], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()).toMatch(/Root node dump/);
  } else {
    expect(execFileSync('debugfs', ['-R', 'stat /tiny.txt', image()], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()).toMatch(/Size of inline data/);
  }
});

test('FAT32: long names and files equal mcopy', async () => {
  const [vol] = await openVolumes(fileAccess(img.fat32), 'fat');
  const fs = vol.fileSystem!;
  for (const p of ['/sub/random.bin', '/Ünïcødé folder ✓/A file with a rather long name, more than 64 characters — ünïcødé.txt', '/empty.txt', '/big/file-0400.txt']) {
    const mcopy = execFileSync('mcopy', ['-n', '-i', img.fat32, `::${p}`, '-'], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' }, maxBuffer: 64 * 1024 * 1024 });
    expect({ p, equal: (await contentOf(fs, await lookup(fs, p))).equals(mcopy) }).toEqual({ p, equal: true });
  }
});
