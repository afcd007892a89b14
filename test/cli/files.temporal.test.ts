// Item-level recovery through the CLI against the real stack: a lab VM whose disk holds a GPT with
// FAT32, NTFS and ext4 made by Debian's tools (written through the lab's guest write path), two
// backups with a file changed and one deleted in between; listings compared with fls -r on the
// raw restore of each point, files with icat, volumes restored as raw checked by ntfsfix, e2fsck
// and fsck.fat, folder restore, hostile guest names, and the bytes fetched.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { startTestStack, type TestStack } from '../support/stack';
import { makeGuestImages, type GuestImages } from '../guestfs/images';
import { fls, listingLines } from '../guestfs/support';

const MiB = 1024 * 1024;
const CLI = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
const PIECE = 4 * MiB;
let stack: TestStack;
let img: GuestImages;
let diskId: string;
const points: string[] = [];
const images: string[] = []; // the disk as each point has it

function hvp(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: { ...process.env, TEMPORAL_ADDRESS: stack.temporal.address, TEMPORAL_NAMESPACE: stack.temporal.namespace, HVPROTECT_SERVER_DIR: stack.server.stateDir, TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr: stderr.trim() }));
  });
}

async function json<T>(args: string[]): Promise<T> {
  const r = await hvp([...args, '--json']);
  if (r.code !== 0) throw new Error(`hvprotect ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** Writes the pieces of `image` that differ from `before` through the lab, as the guest would. */
async function writeGuestDisk(image: string, before?: string): Promise<void> {
  const now = fs.readFileSync(image);
  const old = before ? fs.readFileSync(before) : Buffer.alloc(now.length);
  for (let o = 0; o < now.length; o += PIECE) {
    const piece = now.subarray(o, o + PIECE);
    if (!piece.equals(old.subarray(o, o + PIECE))) await stack.lab.writeDisk('fsvm', diskId, o, piece);
  }
}

beforeAll(async () => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  img = makeGuestImages();
  stack = await startTestStack({ hosts: ['hv01'] });
  const facts = await stack.lab.createVm({ name: 'fsvm', host: 'hv01', disks: [{ sizeBytes: 100 * MiB, content: { kind: 'zeros' } }] });
  diskId = facts.disks[0].diskId;
  await writeGuestDisk(img.gptDisk);
  await json(['protect', 'add', 'fsvm', '--at', '03:00', '--server', stack.server.id]);
  points.push((await json<{ pointId: string }>(['backup', 'fsvm', '--wait'])).pointId);
  images.push(path.join(img.dir, 'point1.img'));
  fs.copyFileSync(img.gptDisk, images[0]);
  // Between the points: on NTFS /sub/hello.txt changed and /tiny.txt deleted; on FAT the same.
  execFileSync('bash', ['-euo', 'pipefail', '-c', `
    mkdir -p mnt2 && { ntfs-3g -o no_detach ntfs.img mnt2 & ntfs3g=$!; }
    until mountpoint -q mnt2; do sleep 0.05; done
    printf 'changed after the first point\\n' > mnt2/sub/hello.txt
    rm mnt2/tiny.txt
    umount mnt2
    wait $ntfs3g  # ntfs-3g has written everything
    dd if=ntfs.img of=gpt.img bs=1M seek=41 conv=notrunc status=none
    export MTOOLS_SKIP_CHECK=1
    printf 'changed on FAT\\n' > new-hello.txt
    mcopy -o -i gpt.img@@1M new-hello.txt ::/sub/hello.txt
    mdel -i gpt.img@@1M ::/tiny.txt
  `], { cwd: img.dir, stdio: ['ignore', 'ignore', 'pipe'] });
  await writeGuestDisk(img.gptDisk, images[0]);
  points.push((await json<{ pointId: string }>(['backup', 'fsvm', '--wait'])).pointId);
  images.push(img.gptDisk);
}, 240_000);
afterAll(async () => {
  await stack?.stop();
  if (img) fs.rmSync(img.dir, { recursive: true, force: true });
});

const volumes = () => [`${diskId}p1`, `${diskId}p2`, `${diskId}p3`];
const sectorOf = (v: number) => [2048, 83968, 133120][v];

test('files volumes: disk, partition, file system, label, size', async () => {
  const vols = await json<Array<{ volume: string; disk: string; partition: number; fileSystem: string; label: string; size: number }>>(['files', 'volumes', 'fsvm']);
  expect(vols).toEqual([
    { volume: `${diskId}p1`, disk: diskId, partition: 1, fileSystem: 'fat32', label: 'GUESTFAT', size: 40 * MiB },
    { volume: `${diskId}p2`, disk: diskId, partition: 2, fileSystem: 'ntfs', label: 'GUESTNTFS', size: 24 * MiB },
    { volume: `${diskId}p3`, disk: diskId, partition: 3, fileSystem: 'ext4', label: 'guestext4', size: 16 * MiB },
  ]);
});

test('every volume of both points lists as fls -r lists the raw restore of that point', async () => {
  for (const [i, pointId] of points.entries()) {
    const dir = path.join(stack.dir, `raw-${i}`);
    const r = await json<{ disks: { path: string }[] }>(['restore', 'fsvm', '--rp', pointId, '--host', 'hv01', '--to', dir, '--format', 'raw']);
    const raw = r.disks[0].path;
    expect(fs.readFileSync(raw).equals(fs.readFileSync(images[i]))).toBe(true);
    for (const [v, vol] of volumes().entries()) {
      const ours = await json<Array<{ path: string; type: string; size: number }>>(['files', 'ls', 'fsvm', `${vol}:/`, '--recursive', '--rp', pointId]);
      expect(listingLines(ours)).toEqual(listingLines(fls(raw, sectorOf(v))));
    }
  }
});

test('a file changed and one deleted between the points come back as each point had them (icat of each raw restore)', async () => {
  const to = path.join(stack.dir, 'changed');
  for (const [i, pointId] of points.entries()) {
    for (const vol of ['GUESTFAT', 'GUESTNTFS']) {
      const dir = path.join(to, `${i}-${vol}`);
      const r = await hvp(['files', 'restore', 'fsvm', `${vol}:/sub/hello.txt`, '--to', dir, '--rp', pointId]);
      expect(r.code).toBe(0);
      const v = vol === 'GUESTFAT' ? 0 : 1;
      const inode = fls(images[i], sectorOf(v)).find((e) => e.path === '/sub/hello.txt')!.inode;
      expect(fs.readFileSync(path.join(dir, 'hello.txt')).equals(execFileSync('icat', ['-o', String(sectorOf(v)), images[i], inode]))).toBe(true);
      const ls = await hvp(['files', 'ls', 'fsvm', `${vol}:/tiny.txt`, '--rp', pointId, '--json']);
      if (i === 0) expect(JSON.parse(ls.stdout)).toMatchObject([{ path: '/tiny.txt', type: 'file', size: 5 }]);
      else expect(ls).toMatchObject({ code: 1, stderr: expect.stringMatching(/:\/tiny\.txt: no such file or directory/) });
    }
  }
  expect(fs.readFileSync(path.join(to, '0-GUESTNTFS', 'hello.txt'), 'utf8')).toBe('hello from a guest\n');
  expect(fs.readFileSync(path.join(to, '1-GUESTNTFS', 'hello.txt'), 'utf8')).toBe('changed after the first point\n');
});

test('a folder restore recreates the tree with contents and modification times; listing one folder fetches a tiny part of the disk', async () => {
  const to = path.join(stack.dir, 'folder');
  const r = await hvp(['files', 'restore', 'fsvm', 'GUESTNTFS:/sub', '--to', to, '--stats']);
  expect(r.code).toBe(0);
  const listed = await json<Array<{ path: string; type: string; size: number; mtime: string }>>(['files', 'ls', 'fsvm', 'GUESTNTFS:/sub', '--recursive']);
  const fl = fls(images[1], sectorOf(1));
  for (const e of listed) {
    const local = path.join(to, 'sub', path.relative('/sub', e.path));
    const st = fs.statSync(local);
    expect(st.isDirectory()).toBe(e.type === 'dir');
    if (e.type === 'file') {
      const inode = fl.find((x) => x.path === e.path)!.inode;
      expect({ p: e.path, same: fs.readFileSync(local).equals(execFileSync('icat', ['-o', String(sectorOf(1)), images[1], inode])) }).toEqual({ p: e.path, same: true });
      expect(Math.abs(st.mtimeMs - Date.parse(e.mtime))).toBeLessThan(1000);
    }
  }
  expect(listed.map((e) => e.path)).toEqual(expect.arrayContaining(['/sub/deeper/deepest/leaf.txt', '/sub/hello-hardlink.txt', '/sub/random.bin']));
  // One folder of 400 entries: a small part of the 100 MiB disk is fetched.
  const ls = await hvp(['files', 'ls', 'fsvm', 'GUESTNTFS:/big', '--stats', '--json']);
  expect(JSON.parse(ls.stdout)).toHaveLength(400);
  const fetched = /fetched .* \(([\d.]+)%\)/.exec(ls.stderr)!;
  expect(Number(fetched[1])).toBeLessThan(5);
});

test('volumes restored as raw pass ntfsfix -n, e2fsck -fn and fsck.fat -n and equal the partitions', async () => {
  const to = path.join(stack.dir, 'volumes');
  const disk = fs.readFileSync(images[1]);
  for (const [v, label] of ['GUESTFAT', 'GUESTNTFS', 'guestext4'].entries()) {
    const r = await json<{ path: string }>(['restore', 'fsvm', '--volume', label, '--to', to, '--format', 'raw']);
    const start = sectorOf(v) * 512;
    expect(fs.readFileSync(r.path).equals(disk.subarray(start, start + fs.statSync(r.path).size))).toBe(true);
    const check = label === 'GUESTFAT' ? ['fsck.fat', ['-n', r.path]] : label === 'GUESTNTFS' ? ['ntfsfix', ['-n', r.path]] : ['e2fsck', ['-fn', r.path]];
    execFileSync(check[0] as string, check[1] as string[], { stdio: 'ignore' }); // throws on a non-zero exit
  }
  const vhdx = await json<{ path: string }>(['restore', 'fsvm', '--volume', `${diskId}p3`, '--to', to, '--format', 'vhdx']);
  const raw = path.join(to, 'from-vhdx.raw');
  execFileSync('qemu-img', ['convert', '-O', 'raw', vhdx.path, raw]);
  execFileSync('e2fsck', ['-fn', raw], { stdio: 'ignore' });
});

test('a guest name with a backslash, .. and a control character is written safely inside --to', async () => {
  const to = path.join(stack.dir, 'hostile');
  const r = await hvp(['files', 'restore', 'fsvm', 'guestext4:/', '--to', to, '--json']);
  const report = JSON.parse(r.stdout) as { restored: Array<{ path: string; to: string }>; skipped: Array<{ path: string; reason: string }> };
  // The one symlink is reported, not followed or recreated; that makes the exit code 1.
  expect(report.skipped).toEqual([{ path: '/link-to-hello', reason: 'a symlink to sub/hello.txt: not restored as such' }]);
  expect(r.code).toBe(1);
  const hostile = report.restored.find((x) => x.path.includes('bell'))!;
  expect(path.basename(hostile.to)).toBe('back%5Cslash ..%07 bell');
  expect(path.dirname(hostile.to)).toBe(path.join(to, `${diskId}p3`));
  expect(fs.readFileSync(hostile.to, 'utf8')).toBe('hostile\n');
  for (const x of report.restored) expect(path.resolve(x.to).startsWith(to + path.sep)).toBe(true);
});

test('errors a person can act on', async () => {
  expect(await hvp(['files', 'ls', 'fsvm', 'NOPE:/'])).toMatchObject({ code: 2, stderr: expect.stringMatching(/no volume NOPE in point .*its volumes: .*p2 \(GUESTNTFS\)/) });
  expect(await hvp(['files', 'ls', 'fsvm', 'no-colon'])).toMatchObject({ code: 1 });
  expect(await hvp(['files', 'ls', 'fsvm', 'GUESTNTFS:/sub/../etc'])).toMatchObject({ code: 1, stderr: expect.stringMatching(/without \. or \.\./) });
  expect(await hvp(['restore', 'fsvm', '--volume', 'GUESTNTFS'])).toMatchObject({ code: 2, stderr: expect.stringMatching(/--volume needs --to DIR/) });
});
