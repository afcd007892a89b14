// The volumes of a disk: its partition table, then each partition's file system found by its
// boot sector or superblock; and path lookup and tree walks over any GuestFileSystem.
import { GuestFsError } from './errors';
import { Ext4FileSystem, looksLikeExt } from './ext4';
import { FatFileSystem, looksLikeFat } from './fat';
import { NtfsFileSystem, looksLikeNtfs } from './ntfs';
import { readPartitionTable, type Partition } from './partitions';
import { slice, type GuestEntry, type GuestFileSystem, type RandomAccess } from './types';

export interface Volume {
  /** `<disk>p<N>` (`<disk>p0` for a disk without a partition table). */
  name: string;
  partition?: Partition;
  start: number;
  size: number;
  /** Undefined when no file system this reader knows was found there. */
  fileSystem?: GuestFileSystem;
  /** What was found instead, or what was wrong. */
  note?: string;
}

/** Every partition of `disk` with the file system in it, opened. */
export async function openVolumes(disk: RandomAccess, diskName: string): Promise<Volume[]> {
  const table = await readPartitionTable(disk, diskName);
  const parts = table.scheme === 'none' ? [{ number: 0, start: 0, size: disk.size, type: 'none' } as Partition] : table.partitions;
  const out: Volume[] = [];
  for (const p of parts) {
    const name = `${diskName}p${p.number}`;
    const dev = slice(disk, p.start, p.size);
    const v: Volume = { name, partition: table.scheme === 'none' ? undefined : p, start: p.start, size: p.size };
    try {
      v.fileSystem = await openFileSystem(dev, name);
      if (!v.fileSystem) v.note = 'no FAT, ext4 or NTFS file system found';
    } catch (err) {
      if (!(err instanceof GuestFsError)) throw err;
      v.note = err.message;
    }
    out.push(v);
  }
  return out;
}

/** The file system on a volume, or undefined when none this reader knows is there. */
export async function openFileSystem(dev: RandomAccess, volume: string): Promise<GuestFileSystem | undefined> {
  if (dev.size < 2048) return undefined;
  const head = await dev.read(0, 2048);
  if (looksLikeNtfs(head)) return NtfsFileSystem.open(dev, volume);
  if (looksLikeExt(head.subarray(1024))) return Ext4FileSystem.open(dev, volume);
  if (looksLikeFat(head)) return FatFileSystem.open(dev, volume);
  return undefined;
}

/** Path components of a guest path; `.`/`..`/empty components are refused, not resolved. */
export function splitGuestPath(volume: string, path: string): string[] {
  const parts = path.split(/[\\/]/).filter((p) => p !== '');
  for (const p of parts) if (p === '.' || p === '..') throw new GuestFsError(volume, path, 'a guest path names its components from the root, without . or ..');
  return parts;
}

/** Looks up `path` from the root, one directory listing per component. */
export async function lookup(fs: GuestFileSystem, path: string): Promise<GuestEntry> {
  let cur = await fs.root();
  for (const part of splitGuestPath(fs.volume, path)) {
    if (cur.type !== 'dir') throw new GuestFsError(fs.volume, cur.path, `not a directory (looking for ${part})`);
    const entries = await fs.list(cur);
    // Exact first; FAT and NTFS names are case-insensitive for the guest.
    const found = entries.find((e) => e.name === part) ?? (fs.type === 'ext4' ? undefined : entries.find((e) => e.name.toLowerCase() === part.toLowerCase()));
    if (!found) throw new GuestFsError(fs.volume, `${cur.path === '/' ? '' : cur.path}/${part}`, 'no such file or directory');
    cur = found;
  }
  return cur;
}

/** Depth-first walk below `dir`, parents before children; a directory seen twice on one path is a loop. */
export async function* walk(fs: GuestFileSystem, dir: GuestEntry, maxDepth = 256): AsyncGenerator<GuestEntry> {
  const onPath = new Set<number>([dir.id]);
  async function* below(d: GuestEntry, depth: number): AsyncGenerator<GuestEntry> {
    if (depth > maxDepth) throw new GuestFsError(fs.volume, d.path, `directories nested deeper than ${maxDepth}`);
    for (const e of await fs.list(d)) {
      yield e;
      if (e.type !== 'dir') continue;
      if (onPath.has(e.id)) throw new GuestFsError(fs.volume, e.path, `directory loop: it is its own ancestor (id ${e.id})`);
      onPath.add(e.id);
      yield* below(e, depth + 1);
      onPath.delete(e.id);
    }
  }
  yield* below(dir, 0);
}
