// Item-level recovery: a recovery point's volumes, folders and files over the storage API,
// without restoring the disk — only the chunks the file systems' metadata and the asked-for
// files live in are fetched. What `hvprotect files …` and `restore --volume` run.
import { constants, promises as fsp } from 'node:fs';
import path from 'node:path';
import { GuestFsError, lookup, openVolumes, walk, type GuestEntry, type GuestFileSystem, type Volume } from '../guestfs';
import type { RecoveryPointManifest } from '../repository/manifest';
import type { StorageClient } from '../storage-api/client';
import { storageApiChunkSource } from './chunk-source';
import { PointDiskReader } from './point-disk-reader';
import { openDiskWriter } from './restore-disk';

export interface PointVolume extends Volume {
  diskId: string;
  reader: PointDiskReader;
}

/** An open recovery point: its disks' readers and volumes, under a restore lease until `close`. */
export interface OpenPoint {
  point: RecoveryPointManifest;
  volumes: PointVolume[];
  /** Bytes fetched so far over all disks, and the disks' total size. */
  fetched(): { bytes: number; chunks: number; diskBytes: number };
  close(): Promise<void>;
}

export class ItemRecoveryError extends Error {
  override readonly name = 'ItemRecoveryError';
}

export async function openPoint(client: StorageClient, dataSource: string, pointId?: string): Promise<OpenPoint> {
  const points = await client.listPoints(dataSource);
  const point = pointId ? points.find((p) => p.pointId === pointId) : points[points.length - 1];
  if (!point) throw new ItemRecoveryError(pointId ? `no recovery point ${pointId} of ${dataSource} (\`hvprotect rp list ${dataSource}\`)` : `${dataSource} has no recovery point yet`);
  const lease = await client.beginRestore({ dataSource, pointId: point.pointId });
  try {
    const volumes: PointVolume[] = [];
    const readers: PointDiskReader[] = [];
    for (const d of point.disks) {
      const reader = await PointDiskReader.open(storageApiChunkSource(client, { dataSource, pointId: point.pointId }, d.diskId));
      readers.push(reader);
      for (const v of await openVolumes({ size: reader.virtualSize, read: (o, l) => reader.read(o, l) }, d.diskId)) volumes.push({ ...v, diskId: d.diskId, reader });
    }
    return {
      point,
      volumes,
      fetched: () => ({
        bytes: readers.reduce((s, r) => s + r.stats.bytesFetched, 0),
        chunks: readers.reduce((s, r) => s + r.stats.chunksFetched, 0),
        diskBytes: readers.reduce((s, r) => s + r.virtualSize, 0),
      }),
      close: () => client.endRestore(lease.leaseId),
    };
  } catch (err) {
    await client.endRestore(lease.leaseId).catch(() => undefined);
    throw err;
  }
}

/** `<diskId>p<N>` or a volume's label (case-insensitive). */
export function findVolume(open: OpenPoint, spec: string): PointVolume {
  const byName = open.volumes.find((v) => v.name === spec);
  if (byName) return byName;
  const byLabel = open.volumes.filter((v) => v.fileSystem?.label && v.fileSystem.label.toLowerCase() === spec.toLowerCase());
  if (byLabel.length === 1) return byLabel[0];
  const known = open.volumes.map((v) => `${v.name}${v.fileSystem?.label ? ` (${v.fileSystem.label})` : v.note ? ` [${v.note}]` : ''}`).join(', ');
  throw new ItemRecoveryError(byLabel.length > 1 ? `label ${spec} names ${byLabel.length} volumes: use one of ${byLabel.map((v) => v.name).join(', ')}` : `no volume ${spec} in point ${open.point.pointId}; its volumes: ${known || '(none)'}`);
}

/** `VOLUME:PATH` → volume and guest path (`/` when only the volume is given). */
export function parseItem(item: string): { volume: string; path: string } {
  const i = item.indexOf(':');
  if (i <= 0) throw new ItemRecoveryError(`${JSON.stringify(item)} is not VOLUME:PATH (e.g. scsi0-0p2:/Users or DATA:/reports)`);
  return { volume: item.slice(0, i), path: item.slice(i + 1) || '/' };
}

export function fileSystemOf(v: PointVolume): GuestFileSystem {
  if (!v.fileSystem) throw new ItemRecoveryError(`volume ${v.name}: ${v.note ?? 'no file system this reader knows'}`);
  return v.fileSystem;
}

export async function listItems(fs: GuestFileSystem, guestPath: string, recursive: boolean): Promise<GuestEntry[]> {
  const e = await lookup(fs, guestPath);
  if (e.type !== 'dir') return [e];
  if (!recursive) return fs.list(e);
  const out: GuestEntry[] = [];
  for await (const x of walk(fs, e)) out.push(x);
  return out;
}

/**
 * A guest name as one safe file name on this host: no separators, no `.`/`..`, no control
 * characters, whatever the guest's file system allowed. The name is written as the guest had it
 * where it is safe, else with each offending character as `%XX`.
 */
export function safeHostName(name: string): string {
  let s = name.replace(/[\x00-\x1f\x7f/\\%]/g, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0').toUpperCase()}`);
  if (s === '' || s === '.' || s === '..') s = s.replace(/\./g, '%2E') || '%00';
  return s.slice(0, 255);
}

export interface RestoredItem {
  path: string;
  to: string;
  type: 'file' | 'dir';
  bytes: number;
}

export interface ItemRestoreReport {
  restored: RestoredItem[];
  /** Entries not restored, each with the reason (unreadable, a symlink, a defect). */
  skipped: Array<{ path: string; reason: string }>;
}

/** Restores a file or a whole folder under `dir` (never outside it), contents and modification times. */
export async function restoreItem(fs: GuestFileSystem, guestPath: string, dir: string, report: ItemRestoreReport): Promise<void> {
  const root = path.resolve(dir);
  await fsp.mkdir(root, { recursive: true });
  const top = await lookup(fs, guestPath);
  const inside = (p: string) => {
    const r = path.resolve(p);
    if (r !== root && !r.startsWith(root + path.sep)) throw new ItemRecoveryError(`refusing to write ${r}: outside ${root}`);
    return r;
  };
  const restoreEntry = async (e: GuestEntry, to: string): Promise<void> => {
    try {
      if (e.type === 'dir') {
        await fsp.mkdir(inside(to));
        const st = await fsp.lstat(to);
        if (!st.isDirectory()) throw new ItemRecoveryError(`${to} exists and is not a folder`);
        for (const c of await fs.list(e)) await restoreEntry(c, path.join(to, safeHostName(c.name)));
        if (e.mtime) await fsp.utimes(to, e.atime ?? e.mtime, e.mtime);
        report.restored.push({ path: e.path, to, type: 'dir', bytes: 0 });
        return;
      }
      if (e.type !== 'file') return void report.skipped.push({ path: e.path, reason: `a ${e.type}${e.target ? ` to ${e.target}` : ''}: not restored as such` });
      if (e.unreadable) return void report.skipped.push({ path: e.path, reason: e.unreadable });
      // O_NOFOLLOW | O_EXCL: never through a link, never over something already there.
      const fh = await fsp.open(inside(to), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
      let n = 0;
      try {
        for await (const piece of fs.content(e)) {
          await fh.write(piece, 0, piece.length, n);
          n += piece.length;
        }
      } finally {
        await fh.close();
      }
      if (e.mtime) await fsp.utimes(to, e.atime ?? e.mtime, e.mtime);
      report.restored.push({ path: e.path, to, type: 'file', bytes: n });
    } catch (err) {
      if (err instanceof GuestFsError) report.skipped.push({ path: e.path, reason: err.message });
      else if ((err as NodeJS.ErrnoException).code === 'EEXIST') report.skipped.push({ path: e.path, reason: `${to} already exists` });
      else throw err;
    }
  };
  await restoreEntry(top, path.join(root, safeHostName(top.path === '/' ? fs.volume : top.name)));
}

/** Writes one volume's bytes (its partition) to `file` as raw (sparse) or VHDX; zero chunks are skipped. */
export async function restoreVolume(v: PointVolume, file: string, format: 'raw' | 'vhdx'): Promise<{ bytes: number }> {
  const r = v.reader;
  const writer = await openDiskWriter(file, format, v.size, false);
  let bytes = 0;
  try {
    const first = Math.floor(v.start / r.chunkSize);
    const end = Math.ceil((v.start + v.size) / r.chunkSize);
    for await (const { slot, data } of r.slotsInOrder(first, end, { skipZero: true })) {
      const s = slot * r.chunkSize;
      const from = Math.max(v.start, s);
      const to = Math.min(v.start + v.size, s + data.length);
      await writer.write(from - v.start, data.subarray(from - s, to - s));
      bytes += to - from;
    }
  } finally {
    await writer.close();
  }
  return { bytes };
}
