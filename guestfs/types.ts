// What every guest file-system reader offers, over the narrow random-access interface it reads
// through (a recovery point's disk via recovery's PointDiskReader, or a plain file in tests).

/** Bytes at an offset: a disk, or a partition of one. */
export interface RandomAccess {
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
}

export type EntryType = 'file' | 'dir' | 'symlink' | 'other';

export interface GuestEntry {
  /** The name in its directory (Win32/long name where the file system has several). */
  name: string;
  /** Full path from the volume's root, `/`-separated, starting with `/`. */
  path: string;
  type: EntryType;
  size: number;
  /** Modification, access, change (or creation on FAT/NTFS: see `created`) times where recorded. */
  mtime?: Date;
  atime?: Date;
  ctime?: Date;
  created?: Date;
  /** Hard links to the same file (1 on FAT). */
  links: number;
  /** The file system's number for it: inode (ext4), MFT record (NTFS), first cluster (FAT). */
  id: number;
  /** Why its bytes cannot be read, when they cannot (compressed or encrypted NTFS, encrypted ext4). */
  unreadable?: string;
  /** Symlink target, where the file system stores it. */
  target?: string;
}

export interface GuestFileSystem {
  readonly type: 'ntfs' | 'ext4' | 'fat12' | 'fat16' | 'fat32';
  readonly label: string;
  /** Names the volume in messages: `<disk>p<N>` or the caller's name for it. */
  readonly volume: string;
  root(): Promise<GuestEntry>;
  /** The entries of a directory, `.` and `..` left out. */
  list(dir: GuestEntry): Promise<GuestEntry[]>;
  /** A file's bytes, in order, in pieces of bounded size. */
  content(file: GuestEntry): AsyncGenerator<Buffer>;
}

/** A view of `length` bytes at `start` of another RandomAccess (a partition of a disk). */
export function slice(of: RandomAccess, start: number, length: number): RandomAccess {
  return {
    size: length,
    read: (offset, len) => {
      if (offset < 0 || len < 0 || offset + len > length) return Promise.reject(new RangeError(`read ${offset}+${len} outside ${length} bytes`));
      return of.read(start + offset, len);
    },
  };
}

/**
 * The pieces `reads` make, in order, with the next `depth - 1` already being read while one is
 * consumed: a file streams at the speed of its reads, not of one read after another.
 */
export async function* readAhead(reads: Iterable<() => Promise<Buffer>>, depth = 3): AsyncGenerator<Buffer> {
  const it = reads[Symbol.iterator]();
  const queue: Promise<Buffer>[] = [];
  const fill = () => {
    while (queue.length < depth) {
      const r = it.next();
      if (r.done) return;
      const p = r.value();
      p.catch(() => undefined); // awaited in order below
      queue.push(p);
    }
  };
  fill();
  while (queue.length) {
    const b = await queue.shift()!;
    fill();
    yield b;
  }
}
