// Whole-disk restore: a point's disk written to a raw or VHDX file, fetch and verification of
// the next chunks overlapped with the write of the current one. Used by the agent's restore.
import { promises as fsp } from 'node:fs';
import { createDynamicVhdx, openVhdx } from '../vhdx';
import type { PointDiskReader } from './point-disk-reader';

export interface DiskWriter {
  write(offset: number, data: Buffer): Promise<void>;
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

/** Chunks fetched ahead of the write; measured on loopback HTTP with 256 KiB chunks (bench/restore.md). */
export const RESTORE_IN_FLIGHT = 32;

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
  for await (const { slot, data } of reader.slotsInOrder(progress.nextSlot, reader.slotCount, { inFlight: opts.inFlight ?? RESTORE_IN_FLIGHT, skipZero: true })) {
    await writer.write(slot * reader.chunkSize, data);
    progress.bytesWritten += data.length;
    progress.chunksVerified++;
    progress.nextSlot = slot + 1;
    if (progress.nextSlot - reported >= every) {
      reported = progress.nextSlot;
      opts.onProgress?.({ ...progress });
    }
  }
  progress.nextSlot = reader.slotCount;
  opts.onProgress?.({ ...progress });
  return progress;
}
