// Helpers for the guest file-system tests: a file or buffer as RandomAccess, and The Sleuth
// Kit's view of a volume (fls -r -p -l) to compare with.
import { execFileSync } from 'node:child_process';
import { openSync, readSync, fstatSync } from 'node:fs';
import * as path from 'node:path';
import { walk, type GuestEntry, type GuestFileSystem, type RandomAccess } from '../../guestfs';

export function fileAccess(file: string): RandomAccess {
  const fd = openSync(file, 'r');
  return {
    size: fstatSync(fd).size,
    read: async (offset, length) => {
      const b = Buffer.alloc(length);
      readSync(fd, b, 0, length, offset);
      return b;
    },
  };
}

/** A buffer as a disk; records the largest single read (no reader may ask for a huge one). */
export function bufferAccess(buf: Buffer): RandomAccess & { largestRead: number; bytesRead: number } {
  const a = {
    size: buf.length,
    largestRead: 0,
    bytesRead: 0,
    read: async (offset: number, length: number) => {
      if (offset < 0 || length < 0 || offset + length > buf.length) throw new RangeError(`read ${offset}+${length} outside ${buf.length}`);
      a.largestRead = Math.max(a.largestRead, length);
      a.bytesRead += length;
      return Buffer.from(buf.subarray(offset, offset + length));
    },
  };
  return a;
}

export interface FlsEntry {
  kind: 'file' | 'dir' | 'symlink';
  path: string;
  size: number;
  inode: string;
  /** An NTFS file fls shows only through its named streams: it has no unnamed $DATA for icat. */
  streamsOnly?: boolean;
}

/** fls -r -p -l at a sector offset: live names only, no virtual or stream entries. */
export function fls(image: string, sectorOffset: number): FlsEntry[] {
  const out = execFileSync('fls', ['-r', '-p', '-l', '-o', String(sectorOffset), image], { maxBuffer: 64 * 1024 * 1024 }).toString('utf8');
  const entries: FlsEntry[] = [];
  const streamsOnly = new Map<string, FlsEntry>();
  for (const line of out.split('\n')) {
    const m = /^(\S)\/(\S) (\*? ?)([0-9-]+):\t([^\t]+)\t(?:[^\t]*\t){4}(\d+)\t/.exec(line);
    if (!m || m[3].includes('*')) continue; // deleted
    const [, , t, , inode, p, size] = m;
    // An NTFS file with named streams only ($Secure:$SDS) is listed by fls under its streams: it is a file of 0 bytes.
    if (p.includes(':') && t === 'r' && !p.includes('(Volume Label Entry)')) {
      const base = `/${p.slice(0, p.indexOf(':'))}`;
      if (!streamsOnly.has(base)) streamsOnly.set(base, { kind: 'file', path: base, size: 0, inode: inode.split('-')[0], streamsOnly: true });
      continue;
    }
    if (p.includes('(Volume Label Entry)') || ['$OrphanFiles', '$MBR', '$FAT1', '$FAT2'].includes(p)) continue;
    const kind = t === 'd' ? 'dir' : t === 'l' ? 'symlink' : t === 'r' ? 'file' : undefined;
    if (!kind) continue;
    entries.push({ kind, path: `/${p}`, size: Number(size), inode });
  }
  for (const [p, e] of streamsOnly) if (!entries.some((x) => x.path === p)) entries.push(e);
  return entries;
}

export async function walkAll(fs: GuestFileSystem): Promise<GuestEntry[]> {
  const all: GuestEntry[] = [];
  for await (const e of walk(fs, await fs.root())) all.push(e);
  return all;
}

export async function contentOf(fs: GuestFileSystem, e: GuestEntry): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of fs.content(e)) parts.push(p);
  return Buffer.concat(parts);
}

/** "kind path size" lines, sorted: what a listing and fls must agree on (sizes of files only). */
export function listingLines(entries: Array<{ kind?: string; type?: string; path: string; size: number }>): string[] {
  return entries.map((e) => {
    const kind = e.kind ?? e.type;
    // fls prints a control character in a name as ^.
    return `${kind} ${e.path.replace(/[\x00-\x1f]/g, '^')}${kind === 'dir' ? '' : ` ${e.size}`}`;
  }).sort();
}

export interface CheckedVolume {
  partition: number;
  /** Bytes from the start of the disk. */
  start: number;
  size: number;
  fileSystem: 'fat32' | 'ntfs' | 'ext4';
  label: string;
  /** fls -r of the volume. */
  entries: FlsEntry[];
  /** The volume copied out to a file of its own (in workDir). */
  image: string;
}

/**
 * Independent tools' view of a raw disk: sfdisk reads the partition table, fsstat names each
 * volume's file system and label, and each must check clean with its own tool (fsck.fat -n,
 * ntfsfix -n, e2fsck -fn) run on a copy of the volume; fls -r lists it. Throws with the tool's
 * output when a check fails.
 */
export function checkGuestDisk(raw: string, workDir: string): CheckedVolume[] {
  const run = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 }).toString('utf8');
    } catch (e) {
      const x = e as { stdout?: Buffer; stderr?: Buffer; status?: number };
      throw new Error(`${cmd} ${args.join(' ')} exited ${x.status}: ${x.stdout?.toString() ?? ''}${x.stderr?.toString() ?? ''}`);
    }
  };
  const table = JSON.parse(run('sfdisk', ['-J', raw])) as { partitiontable: { sectorsize: number; partitions: Array<{ node: string; start: number; size: number }> } };
  if (!table.partitiontable.partitions) throw new Error(`sfdisk finds no partitions on ${raw}: ${JSON.stringify(table)}`);
  const ss = table.partitiontable.sectorsize;
  return table.partitiontable.partitions.map((p) => {
    const partition = Number(/(\d+)$/.exec(p.node)![1]);
    const stat = run('fsstat', ['-o', String(p.start), raw]);
    const type = /File System Type: (\S+)/.exec(stat)![1].toLowerCase();
    const label = (/Volume (?:Name|Label \(Boot Sector\)): ?(.*)/.exec(stat)?.[1] ?? '').trim();
    const image = path.join(workDir, `${path.basename(raw)}-p${partition}.img`);
    run('dd', [`if=${raw}`, `of=${image}`, `bs=${ss}`, `skip=${p.start}`, `count=${p.size}`, 'conv=sparse', 'status=none']);
    if (type === 'fat32') run('fsck.fat', ['-n', image]);
    else if (type === 'ntfs') {
      const out = run('ntfsfix', ['-n', image]);
      if (!/processed successfully/.test(out) || /corrupt|error/i.test(out)) throw new Error(`ntfsfix -n ${image}: ${out}`);
    } else if (type === 'ext4') run('e2fsck', ['-fn', image]);
    else throw new Error(`partition ${partition} of ${raw}: fsstat says ${type}`);
    return { partition, start: p.start * ss, size: p.size * ss, fileSystem: type as CheckedVolume['fileSystem'], label, entries: fls(raw, p.start), image };
  });
}
