// The restore reader: a disk of a recovery point as a raw byte stream (whole or a range).
// The index checksum is checked first, then every chunk is decoded and hashed against its slot
// before a byte of it is passed on. A few chunks are read ahead to keep the disk busy.
import { Readable } from 'node:stream';
import { ZERO_DIGEST } from './chunk-store';
import { RepositoryError } from './errors';
import { DIGEST_SIZE, checkIndex, readSlots } from './fixed-index';
import type { Repository } from './repository';

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
  const file = repo.indexPath(ds, pointId, diskId);
  const point = await repo.getPoint(ds, pointId);
  const disk = point.disks.find((d) => d.diskId === diskId)!;
  const { header, ok, actual } = await checkIndex(file);
  if (!ok || actual !== disk.indexDigest) {
    throw new RepositoryError('CORRUPT', `index of ${ds}/${pointId}/${diskId} fails its checksum`, 'restore from another recovery point; run verify');
  }
  if (header.virtualSize !== disk.virtualSize || header.chunkSize !== disk.chunkSize) {
    throw new RepositoryError('CORRUPT', `index of ${ds}/${pointId}/${diskId} is for ${header.virtualSize} bytes in chunks of ${header.chunkSize}, the manifest says ${disk.virtualSize} in ${disk.chunkSize}`, 'restore from another recovery point; run verify');
  }
  if (info.length === 0) return;
  const cs = header.chunkSize;
  const firstSlot = Math.floor(info.offset / cs);
  const endSlot = Math.ceil((info.offset + info.length) / cs);
  const queue: Array<{ slot: number; data: Promise<Buffer> }> = [];
  const load = (slot: number, digest: Buffer): Promise<Buffer> => {
    const size = Math.min(cs, header.virtualSize - slot * cs);
    if (digest.equals(ZERO_DIGEST)) return Promise.resolve(Buffer.alloc(size));
    const hex = digest.toString('hex');
    return repo.chunks.read(hex).then((raw) => {
      if (raw.length !== size) throw new RepositoryError('CORRUPT', `chunk ${hex} at slot ${slot} has ${raw.length} bytes, the slot ${size}`);
      return raw;
    });
  };
  const emit = (slot: number, raw: Buffer): Buffer => {
    const start = slot * cs;
    const from = Math.max(info.offset, start) - start;
    const to = Math.min(info.offset + info.length, start + raw.length) - start;
    return raw.subarray(from, to);
  };
  for await (const { first, slots } of readSlots(file, firstSlot, endSlot)) {
    for (let o = 0; o < slots.length; o += DIGEST_SIZE) {
      const slot = first + o / DIGEST_SIZE;
      const p = load(slot, Buffer.from(slots.subarray(o, o + DIGEST_SIZE)));
      p.catch(() => undefined); // awaited in order below
      queue.push({ slot, data: p });
      if (queue.length >= READ_AHEAD) {
        const q = queue.shift()!;
        yield emit(q.slot, await q.data);
      }
    }
  }
  while (queue.length) {
    const q = queue.shift()!;
    yield emit(q.slot, await q.data);
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
