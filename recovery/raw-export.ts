// The raw export: a disk of a recovery point as a byte stream (whole or a range), read through
// recovery's PointDiskReader (index checksum first, every chunk checked against its slot before
// a byte of it is passed on), under a read lease. A few chunks are read ahead to keep the disk busy.
import { Readable } from 'node:stream';
import { repositoryChunkSource } from './chunk-source';
import { PointDiskReader } from './point-disk-reader';
import { RepositoryError } from '../repository/errors';
import type { Repository } from '../repository/repository';

export interface ByteRange {
  offset: number;
  /** Bytes to read; default to the end of the disk. */
  length?: number;
}

export interface DiskStreamInfo {
  virtualSize: number;
  chunkSize: number;
  offset: number;
  length: number;
}

const READ_AHEAD = 4;

/** Checks the range against the disk; resolves to what the stream will deliver. */
export async function describeDiskRead(repo: Repository, ds: string, pointId: string, diskId: string, range?: ByteRange): Promise<DiskStreamInfo> {
  const point = await repo.getPoint(ds, pointId);
  const disk = point.disks.find((d) => d.diskId === diskId);
  if (!disk) throw new RepositoryError('NOT_FOUND', `recovery point ${ds}/${pointId} has no disk ${diskId}`, `its disks: ${point.disks.map((d) => d.diskId).join(', ')}`);
  const offset = range?.offset ?? 0;
  const length = range?.length ?? disk.virtualSize - offset;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > disk.virtualSize) {
    throw new RepositoryError('INVALID_ARGUMENT', `range ${offset}+${length} outside the disk of ${disk.virtualSize} bytes`, 'ask for a range inside the disk');
  }
  return { virtualSize: disk.virtualSize, chunkSize: disk.chunkSize, offset, length };
}

async function* diskBytes(repo: Repository, ds: string, pointId: string, diskId: string, info: DiskStreamInfo): AsyncGenerator<Buffer> {
  const reader = await PointDiskReader.open(repositoryChunkSource(repo, ds, pointId, diskId));
  if (info.length === 0) return;
  const cs = reader.chunkSize;
  const end = info.offset + info.length;
  for await (const { slot, data } of reader.slotsInOrder(Math.floor(info.offset / cs), Math.ceil(end / cs), { inFlight: READ_AHEAD })) {
    const start = slot * cs;
    yield data.subarray(Math.max(info.offset, start) - start, Math.min(end, start + data.length) - start);
  }
}

/**
 * Streams a disk (or a range of it); holds a read lease on the point until the stream ends, so
 * shadow storage eviction and retention skip the point meanwhile.
 */
export async function openDiskStream(repo: Repository, ds: string, pointId: string, diskId: string, range?: ByteRange): Promise<{ info: DiskStreamInfo; stream: Readable }> {
  const info = await describeDiskRead(repo, ds, pointId, diskId, range);
  let release!: () => void;
  const done = new Promise<void>((r) => (release = r));
  let leased!: () => void;
  const leaseTaken = new Promise<void>((r) => (leased = r));
  const held = repo.withPointRead(ds, pointId, async () => {
    leased();
    await done;
  });
  // Either the lease is taken or the point vanished in between (NOT_FOUND from getPoint).
  await Promise.race([leaseTaken, held]);
  async function* guarded(): AsyncGenerator<Buffer> {
    try {
      yield* diskBytes(repo, ds, pointId, diskId, info);
    } finally {
      release();
      await held;
    }
  }
  const stream = Readable.from(guarded(), { objectMode: false });
  // A stream destroyed before its first read never runs the generator's finally.
  stream.once('close', release);
  return { info, stream };
}
