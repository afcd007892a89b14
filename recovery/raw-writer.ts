// The raw file a disk is restored to, written with O_DIRECT where the file system allows it.
//
// Why: a buffered write copies every restored byte into the page cache, and the restore's final
// fsync then waits for all of it to reach the disk. Measured on the project's machine (ext4 on a
// virtio disk): `dd bs=4M oflag=direct` 1.2 GB/s, the same through the page cache with
// `conv=fsync` 228 MB/s; and in `perf`, the kernel's page-cache copy was 47% of the restoring
// agent's CPU (bench/restore.md). Restored data is written once and not read back by us, so
// caching it only evicts what is worth caching, as for the repository's chunk files.
//
// How: O_DIRECT needs the memory address, the file offset and the length aligned to the
// device's logical block. The pieces of one write are copied into a staging buffer that is a
// WebAssembly memory (page aligned by construction; a Buffer's memory is not) and written from
// there in one call. Chunk-aligned writes (every slot of a whole-disk restore) go direct; the
// disk's last, short slot is padded to the block and the file cut back to its size at close.
// A write that is not aligned (a volume that starts mid-chunk) goes through a second, buffered
// descriptor of the same file, and so does everything once the file system refuses O_DIRECT
// (EINVAL: tmpfs, some network file systems). Close makes it durable: fsync, then close.
import { constants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { DiskWriter } from './restore-disk';

/** Alignment for offsets, lengths and memory: the largest logical block size in use (4Kn disks). */
const ALIGN = 4096;
const WASM_PAGE = 65536;
// WebAssembly is a global of Node; the project's TypeScript lib (no DOM) does not declare it.
const { Memory } = (globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number; maximum: number }) => { buffer: ArrayBuffer } } }).WebAssembly;

export interface RawWriterOptions {
  /** Try O_DIRECT (default true; falls back by itself). */
  direct?: boolean;
  /** Writes under way at once. */
  parallelWrites?: number;
}

export interface RawDiskWriter extends DiskWriter {
  /** Bytes written with O_DIRECT and through the page cache (what the fallback took). */
  readonly stats: { directBytes: number; bufferedBytes: number };
}

export async function openRawDiskWriter(file: string, virtualSize: number, resuming: boolean, opts: RawWriterOptions = {}): Promise<RawDiskWriter> {
  // The buffered descriptor creates (or reopens) the file; the direct one is a second open of it.
  const buffered = await fsp.open(file, resuming ? 'r+' : 'wx', 0o600);
  let direct: FileHandle | undefined;
  try {
    await buffered.truncate(virtualSize); // sparse: unwritten (zero) chunks take no space
    if ((opts.direct ?? true) && constants.O_DIRECT !== undefined) {
      direct = await fsp.open(file, constants.O_WRONLY | constants.O_DIRECT).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'EINVAL') return undefined; // no O_DIRECT on this file system
        throw err;
      });
    }
  } catch (err) {
    await buffered.close().catch(() => undefined);
    throw err;
  }
  const stats = { directBytes: 0, bufferedBytes: 0 };
  let extended = false; // a padded last block wrote past virtualSize
  const free: Buffer[] = [];
  const staging = (bytes: number): Buffer => {
    const i = free.findIndex((b) => b.length >= bytes);
    if (i >= 0) return free.splice(i, 1)[0];
    const pages = Math.ceil(bytes / WASM_PAGE);
    return Buffer.from(new Memory({ initial: pages, maximum: pages }).buffer);
  };

  const writeBuffered = async (offset: number, parts: Buffer[]): Promise<void> => {
    let at = offset;
    for (const p of parts) {
      let done = 0;
      while (done < p.length) {
        const { bytesWritten } = await buffered.write(p, done, p.length - done, at + done);
        if (bytesWritten === 0) throw Object.assign(new Error(`short write to ${file}: no space left on device`), { code: 'ENOSPC' });
        done += bytesWritten;
      }
      at += p.length;
    }
    stats.bufferedBytes += at - offset;
  };

  const writeParts = async (offset: number, parts: Buffer[]): Promise<void> => {
    const total = parts.reduce((a, p) => a + p.length, 0);
    const end = offset + total;
    const aligned = offset % ALIGN === 0 && (total % ALIGN === 0 || end === virtualSize);
    if (!direct || !aligned || total === 0) return writeBuffered(offset, parts);
    const padded = Math.ceil(total / ALIGN) * ALIGN;
    const buf = staging(padded);
    try {
      let at = 0;
      for (const p of parts) at += p.copy(buf, at);
      buf.fill(0, total, padded); // past the disk's end: cut off at close
      let done = 0;
      while (done < padded) {
        let n: number;
        try {
          n = (await direct.write(buf, done, padded - done, offset + done)).bytesWritten;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
          // The file system wants another alignment after all: buffered from here on.
          await direct.close().catch(() => undefined);
          direct = undefined;
          return writeBuffered(offset, parts);
        }
        if (n === 0 || n % ALIGN !== 0) {
          // A short direct write means the volume is full (or the rest cannot be written direct):
          // the remainder through the page cache, which reports ENOSPC if it is that.
          if (n > 0) done += n;
          if (done < total) await writeBuffered(offset + done, [buf.subarray(done, total)]);
          stats.directBytes += Math.min(done, total);
          return;
        }
        done += n;
      }
      stats.directBytes += total;
      if (offset + padded > virtualSize) extended = true;
    } finally {
      free.push(buf);
    }
  };

  return {
    stats,
    parallelWrites: opts.parallelWrites ?? 2,
    write: (offset, data) => writeParts(offset, [data]),
    writeMany: (offset, parts) => writeParts(offset, parts),
    close: async () => {
      try {
        if (extended) await buffered.truncate(virtualSize);
        await buffered.sync(); // the file's size and extents; data written direct is already out
      } finally {
        await direct?.close().catch(() => undefined);
        await buffered.close();
      }
    },
  };
}
