// Whole-disk restore: a point's disk written to a raw or VHDX file, fetch and verification of
// the next chunks overlapped with the write of the current one. Used by the agent's restore.
import { promises as fsp } from 'node:fs';
import { createDynamicVhdx, openVhdx } from '../vhdx';
import type { PointDiskReader } from './point-disk-reader';
import { openRawDiskWriter } from './raw-writer';

export interface DiskWriter {
  write(offset: number, data: Buffer): Promise<void>;
  /** Consecutive pieces from `offset` in one call (one writev for a raw file). */
  writeMany?(offset: number, parts: Buffer[]): Promise<void>;
  /**
   * Writes that may be under way at once (1 when absent): positional writes to a raw file may
   * overlap; a VHDX write may allocate a block and update the BAT, so those go one at a time.
   */
  readonly parallelWrites?: number;
  close(): Promise<void>;
}

/**
 * Opens (or, resuming, reopens) the file a disk is restored to; raw files are sparse and written
 * with O_DIRECT where the file system allows it (raw-writer.ts). A new file
 * is created exclusively (EEXIST if anything is there) and readable by its owner only (0600).
 */
export async function openDiskWriter(file: string, format: 'vhdx' | 'raw', virtualSize: number, resuming: boolean): Promise<DiskWriter> {
  if (format === 'raw') return openRawDiskWriter(file, virtualSize, resuming);
  if (!resuming) {
    await (await fsp.open(file, 'wx', 0o600)).close(); // claims the name; the VHDX is renamed over it
    await createDynamicVhdx(file, { virtualSize });
    await fsp.chmod(file, 0o600);
  }
  const disk = await openVhdx(file, { writable: true });
  return {
    write: (offset, data) => disk.write(offset, data),
    close: async () => {
      await disk.flush();
      await disk.close();
    },
  };
}

export interface RestoreDiskProgress {
  /** Every slot before this one is written (where a retry resumes). */
  nextSlot: number;
  bytesWritten: number;
  chunksVerified: number;
}

/** Chunks fetched ahead of the write (4 batches of 16 over the storage API); bench/restore.md. */
export const RESTORE_IN_FLIGHT = 64;
/** Consecutive chunks are written together, up to this many bytes. */
const WRITE_MANY_BYTES = 4 * 1024 * 1024;

/**
 * Writes the disk's non-zero slots from `fromSlot` on; zero slots are left unwritten (the file
 * was made sparse). `onProgress` is called at least every `progressEverySlots` slots and at the end.
 */
export async function restorePointDisk(
  reader: PointDiskReader,
  writer: DiskWriter,
  opts: { fromSlot?: number; inFlight?: number; progressEverySlots?: number; onProgress?: (p: RestoreDiskProgress) => void } = {},
): Promise<RestoreDiskProgress> {
  const every = opts.progressEverySlots ?? 256;
  const progress: RestoreDiskProgress = { nextSlot: opts.fromSlot ?? 0, bytesWritten: 0, chunksVerified: 0 };
  let reported = progress.nextSlot;
  // Consecutive slots gathered and written in one call. The next write is issued while the one
  // before is still under way (where the writer allows): the kernel takes it as soon as the first
  // is done, not after this thread has been scheduled again, and the loop keeps taking chunks
  // (and asking for more) meanwhile. Progress counts only what was written, in disk order.
  let first = -1;
  let parts: Buffer[] = [];
  let bytes = 0;
  let written: Promise<void> = Promise.resolve(); // every write issued so far
  const inWrite: Array<Promise<void>> = [];
  const flush = async () => {
    if (!parts.length) return;
    const [from, pieces, n] = [first, parts, bytes];
    parts = [];
    bytes = 0;
    const write = writer.writeMany && pieces.length > 1
      ? writer.writeMany(from * reader.chunkSize, pieces)
      : (async () => { for (const [i, p] of pieces.entries()) await writer.write((from + i) * reader.chunkSize, p); })();
    written = Promise.all([written, write]).then(() => {
      progress.bytesWritten += n;
      progress.chunksVerified += pieces.length;
      progress.nextSlot = from + pieces.length;
      if (progress.nextSlot - reported >= every) {
        reported = progress.nextSlot;
        opts.onProgress?.({ ...progress });
      }
    });
    written.catch(() => undefined); // awaited below or at the end
    inWrite.push(written);
    while (inWrite.length >= (writer.parallelWrites ?? 1)) await inWrite.shift();
  };
  try {
    for await (const { slot, data } of reader.slotsInOrder(progress.nextSlot, reader.slotCount, { inFlight: opts.inFlight ?? RESTORE_IN_FLIGHT, skipZero: true })) {
      if (parts.length && (slot !== first + parts.length || bytes >= WRITE_MANY_BYTES)) await flush();
      if (!parts.length) first = slot;
      parts.push(data);
      bytes += data.length;
    }
    await flush();
  } finally {
    // No write is left under way when this returns or throws: the caller closes the file next.
    await written.catch(() => undefined);
  }
  await written;
  progress.nextSlot = reader.slotCount;
  opts.onProgress?.({ ...progress });
  return progress;
}
