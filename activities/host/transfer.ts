// DiskTransfer: reads a frozen checkpoint disk in chunk-aligned slots and pushes what the
// repository lacks to the storage API, writing index slots into the backup session batch by
// batch. Because each batch's slots are in the session before the position is heartbeated, a
// retry resumes at the heartbeated slot and re-sends at most the batches that were in flight.
//
//   initial replica    slots of allocated ranges (the rest stay zero in the new index)
//   express full       slots touched by the changed ranges since the base point's tracking id
//   consistency check  every slot; only slots whose digest differs from the base index are sent
import { createHash } from 'node:crypto';
import type { DiskReader } from '../../hypervisor/types';
import type { StorageClient } from '../../storage-api/client';
import { INGEST_DEFAULTS, uploadChunks } from '../../storage-api/ingest';
import { ZERO_DIGEST, isAllZero } from '../../repository/zero';
import type { TransferKind } from './types';

const DIGEST_BYTES = 32;

export interface TransferPosition {
  /** Next slot index in `slots` order (not the disk slot number). */
  nextSlot: number;
  bytesRead: number;
  bytesSent: number;
  changedChunks: number;
  chunksDeduplicated: number;
}

export interface DiskTransferOptions {
  reader: DiskReader;
  storage: StorageClient;
  sessionId: string;
  diskId: string;
  chunkSize: number;
  kind: TransferKind;
  /** Base point to clone for this disk (undefined = start from an empty index). */
  basePointId?: string;
  /** Base index slots (consistency check compares against them). */
  baseSlots?: Buffer;
  /** Disk slot numbers to process, ascending. */
  slots: number[];
  resume?: TransferPosition;
  /** Slots per batch: one index patch and one heartbeat each. Default INGEST_DEFAULTS.batchBytes of slots. */
  batchSlots?: number;
  /** Chunk upload requests at the same time. Default INGEST_DEFAULTS. */
  uploadConcurrency?: number;
  /**
   * Batches being sent while the next is read. Default INGEST_DEFAULTS. A retry re-sends at most
   * this many batches (the heartbeated position only passes a batch once it and all before it are in).
   */
  batchesInFlight?: number;
  /** Bandwidth throttle for reads (bytes per second), as DPM offers per host; undefined = none. */
  throttleBytesPerSecond?: number;
  /** Called after each batch is in the session; throws to stop (cancellation, VM moved). */
  onBatch?: (pos: TransferPosition, diskOffset: number) => Promise<void> | void;
}

interface ReadBatch {
  slots: number[];
  digests: Buffer;
  data: Map<string, Buffer>;
  bytes: number;
}

/** Reads one batch, coalescing runs of adjacent slots into single reads. */
async function readBatch(o: DiskTransferOptions, slots: number[]): Promise<ReadBatch> {
  const { reader, chunkSize } = o;
  const digests = Buffer.alloc(slots.length * DIGEST_BYTES);
  const data = new Map<string, Buffer>();
  let bytes = 0;
  let i = 0;
  while (i < slots.length) {
    let j = i + 1;
    while (j < slots.length && slots[j] === slots[j - 1] + 1) j++;
    const offset = slots[i] * chunkSize;
    const length = Math.min((slots[j - 1] + 1) * chunkSize, reader.virtualSize) - offset;
    const buf = await reader.read(offset, length);
    bytes += length;
    for (let k = i; k < j; k++) {
      const start = (slots[k] - slots[i]) * chunkSize;
      const chunk = buf.subarray(start, Math.min(start + chunkSize, buf.length));
      if (isAllZero(chunk)) continue; // zero digest = all-zero chunk, never stored
      const digest = createHash('sha256').update(chunk).digest();
      digest.copy(digests, k * DIGEST_BYTES);
      data.set(digest.toString('hex'), chunk);
    }
    i = j;
  }
  return { slots, digests, data, bytes };
}

export async function transferDiskSlots(o: DiskTransferOptions): Promise<TransferPosition> {
  const batchSlots = o.batchSlots ?? Math.max(1, Math.floor(INGEST_DEFAULTS.batchBytes / o.chunkSize));
  const maxInFlight = Math.max(1, o.batchesInFlight ?? INGEST_DEFAULTS.batchesInFlight);
  const pos: TransferPosition = o.resume ? { ...o.resume } : { nextSlot: 0, bytesRead: 0, bytesSent: 0, changedChunks: 0, chunksDeduplicated: 0 };
  const basePoint = o.basePointId ?? null;

  const send = async (batch: ReadBatch): Promise<void> => {
    // Every chunk the repository lacks is sent — also under slots that did not change, so a
    // consistency check repairs chunks that verify quarantined or that went missing.
    const wanted = [...batch.data.keys()];
    const missing = wanted.length ? await o.storage.missingChunks(wanted) : [];
    pos.chunksDeduplicated += wanted.length - missing.length;
    // Upload in batched requests, several in parallel: fewer round trips.
    await uploadChunks(o.storage, missing.map((h) => ({ digest: h, data: batch.data.get(h)! })), {
      uploadBytes: INGEST_DEFAULTS.uploadBytes,
      concurrency: o.uploadConcurrency ?? INGEST_DEFAULTS.uploadConcurrency,
      onSent: (g) => (pos.bytesSent += g.reduce((n, c) => n + c.data.length, 0)),
    });
    // Index slots: a consistency check writes only those whose digest differs from the base.
    let slots = batch.slots;
    let digests = batch.digests;
    if (o.kind === 'consistency-check' && o.baseSlots) {
      const keep: number[] = [];
      for (let k = 0; k < slots.length; k++) {
        const s = slots[k];
        const b = s * DIGEST_BYTES < o.baseSlots.length ? o.baseSlots.subarray(s * DIGEST_BYTES, (s + 1) * DIGEST_BYTES) : ZERO_DIGEST;
        if (!b.equals(digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES))) keep.push(k);
      }
      slots = keep.map((k) => batch.slots[k]);
      digests = Buffer.concat(keep.map((k) => batch.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES)));
    }
    if (slots.length > 0) {
      await o.storage.putIndex(o.sessionId, o.diskId, { virtualSize: o.reader.virtualSize, basePoint, slots, digests });
      pos.changedChunks += slots.length;
    }
  };

  // Read the next batch while up to maxInFlight earlier ones are being sent: the disk, the
  // network and the server overlap. Batches finish in order for the reported position.
  const running: Array<{ sent: Promise<void>; end: number }> = [];
  const settleOldest = async (last: boolean): Promise<void> => {
    const r = running.shift()!;
    await r.sent;
    pos.nextSlot = r.end;
    const offset = last && running.length === 0 ? o.reader.virtualSize : o.slots[r.end - 1] !== undefined ? (o.slots[r.end - 1] + 1) * o.chunkSize : 0;
    await o.onBatch?.(pos, offset);
  };
  const throttleStart = Date.now();
  let throttled = 0;
  for (let start = pos.nextSlot; start < o.slots.length; start += batchSlots) {
    const slots = o.slots.slice(start, start + batchSlots);
    const batch = await readBatch(o, slots);
    if (o.throttleBytesPerSecond) {
      throttled += batch.bytes;
      const due = throttleStart + (1000 * throttled) / o.throttleBytesPerSecond;
      if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
    }
    pos.bytesRead += batch.bytes;
    const sent = send(batch);
    sent.catch(() => undefined); // awaited in order by settleOldest
    running.push({ sent, end: start + slots.length });
    while (running.length >= maxInFlight) await settleOldest(false);
  }
  while (running.length) await settleOldest(true);
  return pos;
}
