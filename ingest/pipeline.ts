// The one backup data path: read → hash → ask which chunks are missing → upload them → patch the
// session's index. Used by the agent's transferDisk activity and by every benchmark.
//
// Batches of slots are read (adjacent slots with one read), hashed on this thread, and sent
// while the next batch is read; up to `batchesInFlight` batches are being sent at once. A batch's
// slots are in the session's staged index before the position passes it, and the position only
// passes a batch once every batch before it is in too — so a retry that resumes at a reported
// position re-sends at most the batches that were in flight. Memory: about batchesInFlight + 1
// batches of disk data.
//
// Every chunk the repository lacks is sent, also under slots whose digest equals the base's, so a
// consistency check repairs chunks that verify quarantined or that went missing. With `baseSlots`
// (a consistency check) only slots whose digest differs from the base are written to the index.
import { createHash } from 'node:crypto';
import { BatchMemory, batchMemory } from './batch-memory';
import type { DiskReader } from '../hypervisor/types';
import { ZERO_DIGEST, isAllZero } from '../repository/zero';
import type { StorageClient } from '../storage-api/client';

const DIGEST_BYTES = 32;

/**
 * How much is kept in flight. From bench/repository-ingest (4 GiB, agent and server on the same
 * 2 cores): 8 MiB batches, 3 in flight, 4 requests left the cores idle ~13% of the time waiting
 * on round trips; these keep them busy for ~60 MiB more agent memory.
 */
export const INGEST_DEFAULTS = {
  /** Disk bytes read, hashed and sent as one batch (one index patch). */
  batchBytes: 16 * 1024 * 1024,
  /** Batches being sent while the next is read. */
  batchesInFlight: 4,
  /** Chunk upload requests (and reads of one batch) at the same time. */
  uploadConcurrency: 6,
  /** Chunk bytes per upload request. */
  uploadBytes: 4 * 1024 * 1024,
};
export type IngestTuning = typeof INGEST_DEFAULTS;

/** Where an ingest is: give it back as `resume` to carry on after a retry. */
export interface IngestPosition {
  /** Slots of the slot sequence done (an index into it, not a disk slot number). */
  nextSlot: number;
  bytesRead: number;
  /** Chunk bytes uploaded (after deduplication, before the server's compression). */
  bytesSent: number;
  chunksSent: number;
  chunksDeduplicated: number;
  zeroChunks: number;
  /** Index slots written into the session. */
  changedChunks: number;
}

export interface IngestOptions {
  reader: DiskReader;
  storage: StorageClient;
  sessionId: string;
  diskId: string;
  /** The session's chunk size. */
  chunkSize: number;
  /** Disk slots to read, ascending (ingest/geometry.ts). */
  slots: Iterable<number>;
  /** Base point cloned for this disk's index; default the session's; null = start from zeros. */
  basePoint?: string | null;
  /** The base index's slot area: only slots whose digest differs are written (consistency check). */
  baseSlots?: Buffer;
  resume?: IngestPosition;
  tuning?: Partial<IngestTuning>;
  /** Read bandwidth limit, bytes per second (DPM's per-host throttle). */
  throttleBytesPerSecond?: number;
  /**
   * After each batch is in the session, in order, with the disk offset every slot before which
   * is done; once per batch, never after the last. Awaited: throw to stop (cancellation, the VM moved).
   */
  onProgress?: (position: IngestPosition, diskOffset: number) => Promise<void> | void;
  signal?: AbortSignal;
  /** Where batch buffers come from and go back to; default the process's (batch-memory.ts). */
  batchMemory?: BatchMemory;
}

interface ReadChunk {
  slot: number;
  /** 32 zero bytes for an all-zero chunk. */
  digest: Buffer;
  data?: Buffer;
}

/** Runs fn over items, at most `concurrency` at a time. */
export async function pool<T>(items: T[], concurrency: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  // After the first failure no item starts, and the call returns only once every item in flight
  // has ended: no disk read goes on after the caller has given up (and the checkpoint is merged).
  let next = 0;
  let failure: { err: unknown } | undefined;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (!failure && next < items.length) {
      const i = next++;
      try {
        await fn(items[i], i);
      } catch (err) {
        failure ??= { err };
      }
    }
  }));
  if (failure) throw failure.err;
}

/** Uploads chunks in requests of about `uploadBytes` each, `concurrency` at a time. */
export async function uploadChunks(
  storage: StorageClient,
  chunks: Array<{ digest: string; data: Buffer }>,
  opts: { uploadBytes: number; concurrency: number; signal?: AbortSignal; onSent?: (group: Array<{ digest: string; data: Buffer }>) => void },
): Promise<void> {
  const groups: Array<Array<{ digest: string; data: Buffer }>> = [];
  let size = Infinity;
  for (const c of chunks) {
    if (size + c.data.length > opts.uploadBytes) {
      groups.push([]);
      size = 0;
    }
    groups[groups.length - 1].push(c);
    size += c.data.length;
  }
  await pool(groups, opts.concurrency, async (group) => {
    opts.signal?.throwIfAborted();
    await storage.putChunks(group);
    opts.onSent?.(group);
  });
}

export async function ingestDisk(o: IngestOptions): Promise<IngestPosition> {
  const t: IngestTuning = { ...INGEST_DEFAULTS, ...o.tuning };
  const { reader, chunkSize } = o;
  const { virtualSize } = reader;
  const perBatch = Math.max(1, Math.floor(t.batchBytes / chunkSize));
  const uploadBytes = Math.max(chunkSize, t.uploadBytes);
  const pos: IngestPosition = o.resume
    ? { ...o.resume }
    : { nextSlot: 0, bytesRead: 0, bytesSent: 0, chunksSent: 0, chunksDeduplicated: 0, zeroChunks: 0, changedChunks: 0 };
  const slotIter = o.slots[Symbol.iterator]();
  for (let k = 0; k < pos.nextSlot; k++) if (slotIter.next().done) break;
  let indexWritten = false;

  const nextBatch = (): number[] => {
    const batch: number[] = [];
    while (batch.length < perBatch) {
      const r = slotIter.next();
      if (r.done) break;
      batch.push(r.value);
    }
    return batch;
  };

  // Batch memory is reused (readers with readInto): batchesInFlight + 1 buffers for the whole
  // disk instead of a fresh one per read. A buffer goes back to this transfer's own free list once
  // its batch is settled (uploads done or failed), when no chunk of it is referenced any more; the
  // transfer's buffers go to the process's batch memory when it ends, for the next transfer
  // (batch-memory.ts). Kept per transfer while it runs: transfers at once handing buffers through
  // the shared one, past its cap, let buffers go and made new ones all through (4 disks at once
  // 11-20% slower, 2 pairs).
  const memoryPool = o.batchMemory ?? batchMemory;
  const freeBuffers: Buffer[] = [];
  const takeBuffer = () => freeBuffers.pop() ?? memoryPool.take(perBatch * chunkSize);
  const giveBuffer = (b: Buffer) => void freeBuffers.push(b);
  const readBatch = async (slots: number[], memory: Buffer | undefined): Promise<{ chunks: ReadChunk[]; bytes: number }> => {
    const runs: Array<{ first: number; index: number; n: number }> = [];
    slots.forEach((slot, i) => {
      const last = runs[runs.length - 1];
      if (last && last.first + last.n === slot) last.n++;
      else runs.push({ first: slot, index: i, n: 1 });
    });
    const chunks = new Array<ReadChunk>(slots.length);
    let bytes = 0;
    await pool(runs, t.uploadConcurrency, async (run) => {
      o.signal?.throwIfAborted();
      const offset = run.first * chunkSize;
      const length = Math.min(run.n * chunkSize, virtualSize - offset);
      let data: Buffer;
      if (memory && reader.readInto) {
        data = memory.subarray(run.index * chunkSize, run.index * chunkSize + length);
        await reader.readInto(data, offset, o.signal);
      } else data = await reader.read(offset, length, o.signal);
      if (data.length !== length) throw new Error(`disk reader returned ${data.length} bytes at ${offset}, expected ${length}`);
      bytes += length;
      // Hashed here: WebCrypto's digest would run on the thread pool but copies every chunk first.
      for (let k = 0; k < run.n; k++) {
        const chunk = data.subarray(k * chunkSize, Math.min(length, (k + 1) * chunkSize));
        const slot = run.first + k;
        chunks[run.index + k] = isAllZero(chunk) ? { slot, digest: ZERO_DIGEST } : { slot, digest: createHash('sha256').update(chunk).digest(), data: chunk };
      }
    });
    return { chunks, bytes };
  };

  const sendBatch = async (chunks: ReadChunk[]): Promise<void> => {
    const unique = new Map<string, Buffer>();
    let nonZero = 0;
    for (const c of chunks) {
      if (!c.data) continue;
      nonZero++;
      unique.set(c.digest.toString('hex'), c.data);
    }
    const missing = unique.size ? await o.storage.missingChunks([...unique.keys()]) : [];
    await uploadChunks(o.storage, missing.map((hex) => ({ digest: hex, data: unique.get(hex)! })), {
      uploadBytes, concurrency: t.uploadConcurrency, signal: o.signal,
      onSent: (group) => {
        for (const c of group) pos.bytesSent += c.data.length;
        pos.chunksSent += group.length;
      },
    });
    pos.chunksDeduplicated += nonZero - missing.length;
    pos.zeroChunks += chunks.length - nonZero;
    for (const c of chunks) c.data = undefined;
    const written = o.baseSlots ? chunks.filter((c) => !c.digest.equals(baseDigest(o.baseSlots!, c.slot))) : chunks;
    if (written.length === 0) return;
    const digests = Buffer.allocUnsafe(written.length * DIGEST_BYTES);
    written.forEach((c, i) => c.digest.copy(digests, i * DIGEST_BYTES));
    await o.storage.putIndex(o.sessionId, o.diskId, { virtualSize, basePoint: o.basePoint, slots: written.map((c) => c.slot), digests });
    indexWritten = true;
    pos.changedChunks += written.length;
  };

  // Batches finish in order for the reported position; a failed one fails the ingest.
  const running: Array<{ sent: Promise<void>; slots: number; endOffset: number }> = [];
  const settleOldest = async (): Promise<void> => {
    const r = running.shift()!;
    await r.sent;
    pos.nextSlot += r.slots;
    await o.onProgress?.({ ...pos }, r.endOffset);
  };
  const throttleStart = Date.now();
  let throttled = 0;
  try {
    try {
      for (;;) {
        o.signal?.throwIfAborted();
        const slots = nextBatch();
        if (slots.length === 0) break;
        const memory = reader.readInto ? takeBuffer() : undefined;
        let read: Awaited<ReturnType<typeof readBatch>>;
        try {
          read = await readBatch(slots, memory);
        } catch (err) {
          if (memory) giveBuffer(memory); // readBatch returns only once none of its reads is still writing
          throw err;
        }
        const { chunks, bytes } = read;
        if (o.throttleBytesPerSecond) {
          throttled += bytes;
          const due = throttleStart + (1000 * throttled) / o.throttleBytesPerSecond;
          if (due > Date.now()) await abortableSleep(due - Date.now(), o.signal);
        }
        pos.bytesRead += bytes;
        const sent = sendBatch(chunks);
        sent.catch(() => undefined); // awaited in order by settleOldest
        if (memory) void sent.then(() => giveBuffer(memory), () => giveBuffer(memory));
        running.push({ sent, slots: slots.length, endOffset: Math.min(virtualSize, (slots[slots.length - 1] + 1) * chunkSize) });
        while (running.length >= Math.max(1, t.batchesInFlight)) await settleOldest();
      }
      while (running.length) await settleOldest();
    } catch (err) {
      // Stopped (cancelled, the VM moved, a failure): return only once nothing of ours is in flight.
      await Promise.allSettled(running.map((r) => r.sent));
      throw err;
    }
  } finally {
    // Nothing of this transfer is in flight now, so every buffer it took is back in its free list.
    for (const b of freeBuffers.splice(0)) memoryPool.give(b);
  }
  if (!indexWritten && pos.changedChunks === 0) {
    // Nothing written (no change, an empty disk, or all resumed): the disk's staged index must exist.
    await o.storage.putIndex(o.sessionId, o.diskId, { virtualSize, basePoint: o.basePoint, slots: [], digests: Buffer.alloc(0) });
  }
  return pos;
}

/** Waits `ms`, or less when `signal` aborts (then throws its reason). */
function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function baseDigest(baseSlots: Buffer, slot: number): Buffer {
  const o = slot * DIGEST_BYTES;
  return o < baseSlots.length ? baseSlots.subarray(o, o + DIGEST_BYTES) : ZERO_DIGEST;
}
