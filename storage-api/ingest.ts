// Ingest of one disk into a backup session, for host agents: reads the chunks that changed (or
// the whole disk), hashes them, asks the server which it lacks, uploads those, and writes the
// index slots (the delta form, so an incremental sends 40 bytes per changed chunk, not a whole
// index). Reading the next batch overlaps the uploads of the previous ones; memory stays at
// about batchesInFlight + 1 batches (80 MiB by default). Progress reports a byte position: give it back as `resumeFrom` to carry on after
// a retry (slots before it are already in the session's staged index).
import { createHash } from 'node:crypto';
import type { StorageClient } from './client';
import { isAllZero } from '../repository/zero';

export type DiskReader = (offset: number, length: number) => Promise<Buffer>;

export interface ByteRangeOfDisk {
  offset: number;
  length: number;
}

export interface IngestProgress {
  /** Every chunk before this disk offset is in the session. */
  position: number;
  bytesRead: number;
  /** Chunk bytes uploaded (after deduplication, before server-side compression). */
  bytesSent: number;
  chunksSent: number;
  chunksDeduplicated: number;
  zeroChunks: number;
  slotsDone: number;
  slotsTotal: number;
}

export interface IngestDiskOptions {
  client: StorageClient;
  sessionId: string;
  diskId: string;
  virtualSize: number;
  /** The session's chunk size. */
  chunkSize: number;
  read: DiskReader;
  /** Changed byte ranges (e.g. from RCT); absent = read the whole disk. */
  changedRanges?: ByteRangeOfDisk[];
  /** Base point cloned for this disk; default the session's; null = start from zeros. */
  basePoint?: string | null;
  /** A `position` from an earlier progress report. */
  resumeFrom?: number;
  /** Parallel reads and parallel uploads. Default INGEST_DEFAULTS.uploadConcurrency. */
  concurrency?: number;
  /** Batches uploading at the same time while the next is read. Default INGEST_DEFAULTS. */
  batchesInFlight?: number;
  /** Bytes read per batch. Default INGEST_DEFAULTS. */
  batchBytes?: number;
  /** Chunk bytes per upload request. Default INGEST_DEFAULTS. */
  uploadBytes?: number;
  onProgress?: (p: IngestProgress) => void;
  signal?: AbortSignal;
}

/** Slots touched by the ranges, ascending, each once. */
export function* slotsOfRanges(ranges: ByteRangeOfDisk[], chunkSize: number, virtualSize: number): Generator<number> {
  const sorted = [...ranges].filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const count = Math.ceil(virtualSize / chunkSize);
  let next = 0;
  for (const r of sorted) {
    if (r.offset < 0 || r.offset + r.length > virtualSize) throw new Error(`changed range ${r.offset}+${r.length} outside the disk of ${virtualSize} bytes`);
    const first = Math.max(next, Math.floor(r.offset / chunkSize));
    const last = Math.min(count - 1, Math.floor((r.offset + r.length - 1) / chunkSize));
    for (let s = first; s <= last; s++) yield s;
    next = Math.max(next, last + 1);
  }
}

function countSlots(ranges: ByteRangeOfDisk[] | undefined, chunkSize: number, virtualSize: number): number {
  if (!ranges) return Math.ceil(virtualSize / chunkSize);
  let n = 0;
  for (const _ of slotsOfRanges(ranges, chunkSize, virtualSize)) n++;
  return n;
}

/**
 * How much an agent keeps in flight, for both data paths (`ingestDisk` and the backup activity's
 * transfer). From bench/repository-ingest (4 GiB, agent and server on the same 2 cores): 8 MiB
 * batches, 3 in flight, 4 requests left the cores idle ~13% of the time waiting on round trips
 * (12.2-12.8 s); these kept them busy (10.9-11.3 s) for ~60 MiB more agent memory (peak ~220 MiB).
 */
export const INGEST_DEFAULTS = {
  /** Disk bytes read, hashed and sent as one batch (one index patch). */
  batchBytes: 16 * 1024 * 1024,
  /** Batches being sent while the next is read. */
  batchesInFlight: 4,
  /** Chunk upload requests at the same time. */
  uploadConcurrency: 6,
  /** Chunk bytes per upload request. */
  uploadBytes: 4 * 1024 * 1024,
};

/**
 * Uploads chunks in requests of about `uploadBytes` each, `concurrency` at a time; `onSent`
 * after each request with the chunks it carried.
 */
export async function uploadChunks(
  client: StorageClient,
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
    await client.putChunks(group);
    opts.onSent?.(group);
  });
}

/** Runs fn over items, at most `concurrency` at a time. */
export async function pool<T>(items: T[], concurrency: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  }));
}


interface ReadChunk {
  slot: number;
  digest: Buffer; // 32 zero bytes for an all-zero chunk
  data?: Buffer; // kept until the upload decision
}

export async function ingestDisk(opts: IngestDiskOptions): Promise<IngestProgress> {
  const { client, sessionId, diskId, virtualSize, chunkSize, read } = opts;
  const concurrency = opts.concurrency ?? INGEST_DEFAULTS.uploadConcurrency;
  const uploadBytes = Math.max(chunkSize, opts.uploadBytes ?? INGEST_DEFAULTS.uploadBytes);
  const perBatch = Math.max(1, Math.floor((opts.batchBytes ?? INGEST_DEFAULTS.batchBytes) / chunkSize));
  const startSlot = Math.floor((opts.resumeFrom ?? 0) / chunkSize);
  const slotIter = opts.changedRanges
    ? slotsOfRanges(opts.changedRanges, chunkSize, virtualSize)
    : (function* () {
        const count = Math.ceil(virtualSize / chunkSize);
        for (let s = 0; s < count; s++) yield s;
      })();
  const progress: IngestProgress = {
    position: Math.min(virtualSize, startSlot * chunkSize), bytesRead: 0, bytesSent: 0, chunksSent: 0,
    chunksDeduplicated: 0, zeroChunks: 0, slotsDone: 0, slotsTotal: countSlots(opts.changedRanges, chunkSize, virtualSize),
  };

  const nextBatch = (): number[] => {
    const batch: number[] = [];
    while (batch.length < perBatch) {
      const r = slotIter.next();
      if (r.done) break;
      if (r.value < startSlot) {
        progress.slotsDone++;
        continue;
      }
      batch.push(r.value);
    }
    return batch;
  };

  const readBatch = async (slots: number[]): Promise<ReadChunk[]> => {
    // Consecutive slots are read with one call (fewer, larger reads; one buffer per run).
    const runs: Array<{ first: number; index: number; n: number }> = [];
    slots.forEach((slot, i) => {
      const last = runs[runs.length - 1];
      if (last && last.first + last.n === slot) last.n++;
      else runs.push({ first: slot, index: i, n: 1 });
    });
    const out = new Array<ReadChunk>(slots.length);
    await pool(runs, concurrency, async (run) => {
      opts.signal?.throwIfAborted();
      const offset = run.first * chunkSize;
      const length = Math.min(run.n * chunkSize, virtualSize - offset);
      const data = await read(offset, length);
      if (data.length !== length) throw new Error(`disk reader returned ${data.length} bytes at ${offset}, expected ${length}`);
      progress.bytesRead += length;
      // Hashed here, on the calling thread: WebCrypto's digest would run on the thread pool but
      // copies every chunk first (2.9 GB of copies and their GC for the 4 GiB benchmark image),
      // which cost more than the overlap gained on a machine the server shares.
      for (let k = 0; k < run.n; k++) {
        const chunk = data.subarray(k * chunkSize, Math.min(length, (k + 1) * chunkSize));
        const slot = run.first + k;
        out[run.index + k] = isAllZero(chunk)
          ? { slot, digest: Buffer.alloc(32) }
          : { slot, digest: createHash('sha256').update(chunk).digest(), data: chunk };
      }
    });
    return out;
  };

  let first = true;
  const uploadBatch = async (chunks: ReadChunk[]): Promise<void> => {
    const nonZero = chunks.filter((c) => c.data);
    const unique = new Map<string, ReadChunk>();
    for (const c of nonZero) unique.set(c.digest.toString('hex'), c);
    const missing = unique.size ? new Set(await opts.client.missingChunks([...unique.keys()])) : new Set<string>();
    // Missing chunks go up in requests of about uploadBytes each, several in parallel.
    await uploadChunks(client, [...missing].map((hex) => ({ digest: hex, data: unique.get(hex)!.data! })), {
      uploadBytes, concurrency, signal: opts.signal,
      onSent: (group) => {
        for (const c of group) progress.bytesSent += c.data.length;
        progress.chunksSent += group.length;
      },
    });
    progress.chunksDeduplicated += nonZero.length - [...missing].length;
    progress.zeroChunks += chunks.length - nonZero.length;
    for (const c of chunks) c.data = undefined;
    const digests = Buffer.alloc(chunks.length * 32);
    chunks.forEach((c, i) => c.digest.copy(digests, i * 32));
    await client.putIndex(sessionId, diskId, { virtualSize, basePoint: opts.basePoint, slots: chunks.map((c) => c.slot), digests });
    first = false;
    progress.slotsDone += chunks.length;
  };

  // Up to `inFlight` batches upload at once; the reported position only moves past a batch
  // once it and every batch before it are in the staged index.
  const inFlight = Math.max(1, opts.batchesInFlight ?? INGEST_DEFAULTS.batchesInFlight);
  const running: Array<Promise<void>> = [];
  const ends: number[] = [];
  const finished: boolean[] = [];
  let reported = -1;
  for (let k = 0; ; k++) {
    const batch = nextBatch();
    if (batch.length === 0) break;
    const chunks = await readBatch(batch);
    ends[k] = Math.min(virtualSize, (batch[batch.length - 1] + 1) * chunkSize);
    const p = uploadBatch(chunks).then(() => {
      finished[k] = true;
      while (finished[reported + 1]) reported++;
      if (reported >= 0) progress.position = Math.max(progress.position, ends[reported]);
      opts.onProgress?.({ ...progress });
    });
    p.catch(() => undefined); // awaited below
    running.push(p);
    if (running.length >= inFlight) await running.shift();
  }
  await Promise.all(running);
  if (first) {
    // Nothing changed (or all resumed): make sure the disk's staged index exists.
    await client.putIndex(sessionId, diskId, { virtualSize, basePoint: opts.basePoint, slots: [], digests: Buffer.alloc(0) });
  }
  progress.position = opts.changedRanges ? Math.max(progress.position, virtualSize) : virtualSize;
  opts.onProgress?.({ ...progress });
  return progress;
}
