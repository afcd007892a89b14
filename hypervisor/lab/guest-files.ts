// `lab vm files put|rm`: change a file inside a lab guest's file system between backups, the way
// the guest would — the volume is copied out, changed by Debian's own tool for its file system
// (an ntfs-3g mount, debugfs -w, mtools), and every 64 KiB piece that differs is written back
// through the lab's guest write path, so change tracking and an open checkpoint see it.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GuestFsError, lookup, openVolumes, splitGuestPath, type Volume } from '../../guestfs';
import type { Lab } from './lab';

const PIECE = 64 * 1024;
const COPY = 4 * 1024 * 1024;

export class GuestFilesError extends Error {
  override readonly name = 'LabError'; // a refusal the lab makes, as LabError
}

async function findGuestVolume(lab: Lab, vm: string, volume: string): Promise<{ diskId: string; v: Volume }> {
  const facts = await lab.inspectVm(vm);
  const all: Array<{ diskId: string; v: Volume }> = [];
  for (const d of facts.disks) {
    for (const v of await openVolumes({ size: d.virtualSize, read: (o, l) => lab.readDisk(vm, d.diskId, o, l) }, d.diskId)) all.push({ diskId: d.diskId, v });
  }
  const hit = all.find((x) => x.v.name === volume) ?? all.find((x) => x.v.fileSystem?.label && x.v.fileSystem.label.toLowerCase() === volume.toLowerCase());
  if (!hit?.v.fileSystem) throw new GuestFilesError(`VM ${vm} has no volume ${volume} with a file system; its volumes: ${all.map((x) => `${x.v.name}${x.v.fileSystem ? ` (${x.v.fileSystem.type} ${x.v.fileSystem.label})` : ''}`).join(', ') || '(none)'}`);
  return hit;
}

/** Puts `source` (a file here) at VOLUME:PATH in the guest, or removes VOLUME:PATH; returns the bytes written to the disk. */
export async function changeGuestFile(lab: Lab, vm: string, item: string, change: { put: string } | { rm: true }): Promise<{ volume: string; path: string; bytesWritten: number; ranges: Array<{ offset: number; length: number }> }> {
  const i = item.indexOf(':');
  if (i <= 0) throw new GuestFilesError(`${item} is not VOLUME:PATH`);
  const parts = splitGuestPath(item.slice(0, i), item.slice(i + 1));
  if (parts.length === 0) throw new GuestFilesError(`${item} names no file`);
  const guestPath = `/${parts.join('/')}`;
  const { diskId, v } = await findGuestVolume(lab, vm, item.slice(0, i));
  if ('rm' in change) {
    // The tools differ in what they say about a missing file (debugfs says it and exits 0).
    const found = await lookup(v.fileSystem!, guestPath).catch((err) => {
      if (err instanceof GuestFsError) throw new GuestFilesError(`VM ${vm}: ${err.message}`);
      throw err;
    });
    if (found.type === 'dir') throw new GuestFilesError(`VM ${vm}: ${v.name}:${guestPath} is a folder; rm removes files`);
  }
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'hvp-guest-files-'));
  const image = path.join(tmp, 'volume.img');
  try {
    const fh = await fsp.open(image, 'w');
    const before: Buffer[] = [];
    try {
      await fh.truncate(v.size);
      for (let o = 0; o < v.size; o += COPY) {
        const b = await lab.readDisk(vm, diskId, v.start + o, Math.min(COPY, v.size - o));
        before.push(b);
        await fh.write(b, 0, b.length, o);
      }
    } finally {
      await fh.close();
    }
    const run = (cmd: string, args: string[], env?: NodeJS.ProcessEnv) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    const type = v.fileSystem!.type;
    const dirs = parts.slice(0, -1).map((_, k) => `/${parts.slice(0, k + 1).join('/')}`);
    if (type === 'ntfs') {
      const mnt = path.join(tmp, 'mnt');
      await fsp.mkdir(mnt);
      // In the foreground (no_detach): umount returns before ntfs-3g has written everything; its exit says it has.
      const daemon = spawn('ntfs-3g', ['-o', 'no_detach', image, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
      const exited = new Promise<number | null>((resolve) => daemon.once('exit', resolve));
      let stderr = '';
      daemon.stderr.on('data', (d) => (stderr += d));
      for (let t = 0; spawnSync('mountpoint', ['-q', mnt]).status !== 0; t++) {
        if (daemon.exitCode !== null || t > 200) throw new GuestFilesError(`${item} in VM ${vm}: ntfs-3g could not mount the volume: ${stderr.trim() || `exit ${daemon.exitCode}`}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      try {
        const target = path.join(mnt, ...parts);
        if ('put' in change) {
          await fsp.mkdir(path.dirname(target), { recursive: true });
          await fsp.copyFile(change.put, target);
        } else await fsp.rm(target);
      } finally {
        run('umount', [mnt]);
        await exited;
      }
    } else if (type === 'ext4') {
      const script = 'put' in change
        ? [...dirs.map((d) => `mkdir "${d}"`), `rm "${guestPath}"`, `write "${change.put}" "${guestPath}"`]
        : [`rm "${guestPath}"`];
      await fsp.writeFile(path.join(tmp, 'debugfs.cmd'), script.join('\n') + '\n');
      run('debugfs', ['-w', '-f', path.join(tmp, 'debugfs.cmd'), image]);
    } else {
      const env = { MTOOLS_SKIP_CHECK: '1' };
      if ('put' in change) {
        for (const d of dirs) {
          try {
            run('mmd', ['-i', image, `::${d}`], env);
          } catch {
            // already there
          }
        }
        run('mcopy', ['-o', '-i', image, change.put, `::${guestPath}`], env);
      } else run('mdel', ['-i', image, `::${guestPath}`], env);
    }
    // Write back what changed, through the guest write path.
    const after = await fsp.open(image, 'r');
    let written = 0;
    const ranges: Array<{ offset: number; length: number }> = [];
    try {
      for (let o = 0; o < v.size; o += PIECE) {
        const len = Math.min(PIECE, v.size - o);
        const now = Buffer.alloc(len);
        await after.read(now, 0, len, o);
        const was = before[Math.floor(o / COPY)].subarray(o % COPY, (o % COPY) + len);
        if (!now.equals(was)) {
          await lab.writeDisk(vm, diskId, v.start + o, now);
          written += len;
          const last = ranges[ranges.length - 1];
          if (last && last.offset + last.length === v.start + o) last.length += len;
          else ranges.push({ offset: v.start + o, length: len });
        }
      }
    } finally {
      await after.close();
    }
    return { volume: v.name, path: guestPath, bytesWritten: written, ranges };
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    if (e.stderr) throw new GuestFilesError(`${item} in VM ${vm}: ${e.stderr.toString().trim().split('\n').slice(-2).join(' ') || e.message}`);
    throw err;
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}
