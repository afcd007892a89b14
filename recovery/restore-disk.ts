// Whole-disk restore: a point's disk written to a raw or VHDX file, fetch and verification of
// the next chunks overlapped with the write of the current one. Used by the agent's restore.
import { promises as fsp } from 'node:fs';
import { createDynamicVhdx, openVhdx } from '../vhdx';
import type { PointDiskReader } from './point-disk-reader';

export interface DiskWriter {
  write(offset: number, data: Buffer): Promise<void>;
  /** Consecutive pieces from `offset` in one call (one writev for a raw file). */
  writeMany?(offset: number, parts: Buffer[]): Promise<void>;
  close(): Promise<void>;
}

/**
 * Opens (or, resuming, reopens) the file a disk is restored to; raw files are sparse. A new file
 * is created exclusively (EEXIST if anything is there) and readable by its owner only (0600).
 */
export async function openDiskWriter(file: string, format: 'vhdx' | 'raw', virtualSize: number, resuming: boolean): Promise<DiskWriter> {
  if (format === 'raw') {
    const fh = await fsp.open(file, resuming ? 'r+' : 'wx', 0o600);
    await fh.truncate(virtualSize); // sparse: unwritten (zero) chunks take no space
    return {
      write: async (offset, data) => {
        await fh.write(data, 0, data.length, offset);
      },
      writeMany: async (offset, parts) => {
        const total = parts.reduce((a, p) => a + p.length, 0);
        let done = (await fh.writev(parts, offset)).bytesWritten;
        if (done === total) return;
        // A short writev: the rest one piece at a time.
        for (let i = 0, at = 0; i < parts.length; at += parts[i].length, i++) {
          if (at + parts[i].length <= done) continue;
          const from = Math.max(0, done - at);
          await fh.write(parts[i], from, parts[i].length - from, offset + at + from);
          done = at + parts[i].length;
        }
      },
      close: async () => {
        await fh.sync();
        await fh.close();
      },
    };
  }
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
  // Consecutive slots gathered and written in one call; progress counts only what was written.
  let first = -1;
  let parts: Buffer[] = [];
  let bytes = 0;
  const flush = async () => {
    if (!parts.length) return;
    if (writer.writeMany && parts.length > 1) await writer.writeMany(first * reader.chunkSize, parts);
    else for (const [i, p] of parts.entries()) await writer.write((first + i) * reader.chunkSize, p);
    progress.bytesWritten += bytes;
    progress.chunksVerified += parts.length;
    progress.nextSlot = first + parts.length;
    parts = [];
    bytes = 0;
    if (progress.nextSlot - reported >= every) {
      reported = progress.nextSlot;
      opts.onProgress?.({ ...progress });
    }
  };
  for await (const { slot, data } of reader.slotsInOrder(progress.nextSlot, reader.slotCount, { inFlight: opts.inFlight ?? RESTORE_IN_FLIGHT, skipZero: true })) {
    if (parts.length && (slot !== first + parts.length || bytes >= WRITE_MANY_BYTES)) await flush();
    if (!parts.length) first = slot;
    parts.push(data);
    bytes += data.length;
  }
  await flush();
  progress.nextSlot = reader.slotCount;
  opts.onProgress?.({ ...progress });
  return progress;
}
