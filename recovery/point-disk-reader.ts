// The one reader of a recovery point's disk: random access (offset, length → bytes) for
// file-system browsing, and ordered pipelined reads for whole-disk restore and raw export.
// Every chunk is checked against its slot's digest (SHA-256, and its length against the slot)
// before a byte of it is handed out; all-zero slots are never fetched.
import { createHash } from 'node:crypto';
import { RepositoryError } from '../repository/errors';
import type { ChunkSource } from './chunk-source';

const DIGEST = 32;
const ZERO = Buffer.alloc(DIGEST);

/** Chunks kept for random access; a directory walk touches the same MFT/inode chunks again and again. */
export const DEFAULT_CACHE_BYTES = 64 * 1024 * 1024;
/** The largest single random read: file-system readers ask for records and runs, never a disk. */
export const MAX_READ_BYTES = 256 * 1024 * 1024;

export interface ReaderStats {
  /** Chunks fetched from the source (cache misses, zero slots excluded). */
  chunksFetched: number;
  /** Plaintext bytes of those chunks. */
  bytesFetched: number;
  cacheHits: number;
}

export class PointDiskReader {
  readonly stats: ReaderStats = { chunksFetched: 0, bytesFetched: 0, cacheHits: 0 };
  readonly slotCount: number;
  /** Least recently used first (a Map keeps insertion order). */
  private readonly cache = new Map<number, Buffer>();
  private cachedBytes = 0;
  private readonly inFlight = new Map<number, Promise<Buffer>>();

  private constructor(
    readonly source: ChunkSource,
    readonly virtualSize: number,
    readonly chunkSize: number,
    private readonly slots: Buffer,
    private readonly cacheBytes: number,
  ) {
    this.slotCount = slots.length / DIGEST;
  }

  static async open(source: ChunkSource, opts: { cacheBytes?: number } = {}): Promise<PointDiskReader> {
    const idx = await source.readIndex();
    if (!Number.isSafeInteger(idx.virtualSize) || idx.virtualSize < 0 || !Number.isSafeInteger(idx.chunkSize) || idx.chunkSize <= 0 || idx.slots.length !== Math.ceil(idx.virtualSize / idx.chunkSize) * DIGEST) {
      throw new RepositoryError('CORRUPT', `index of ${source.where}: ${idx.slots.length / DIGEST} slots for ${idx.virtualSize} bytes in chunks of ${idx.chunkSize}`, 'restore from another recovery point; run verify');
    }
    return new PointDiskReader(source, idx.virtualSize, idx.chunkSize, idx.slots, opts.cacheBytes ?? DEFAULT_CACHE_BYTES);
  }

  get where(): string {
    return this.source.where;
  }

  isZeroSlot(slot: number): boolean {
    return this.digestOf(slot).equals(ZERO);
  }

  /** Bytes of the disk in `slot` (the last slot may be short). */
  slotLength(slot: number): number {
    return Math.min(this.chunkSize, this.virtualSize - slot * this.chunkSize);
  }

  /** A slot's bytes, verified, not cached: for streaming a whole disk once. */
  async fetchSlot(slot: number): Promise<Buffer> {
    const size = this.slotLength(slot);
    const digest = this.digestOf(slot);
    if (digest.equals(ZERO)) return Buffer.alloc(size);
    const hex = digest.toString('hex');
    const data = await this.source.readChunk(hex);
    const at = `chunk ${hex} of ${this.where} (slot ${slot}, disk offset ${slot * this.chunkSize})`;
    if (data.length !== size) throw new RepositoryError('CORRUPT', `${at} has ${data.length} bytes, the slot ${size}`, 'run `hvprotect verify --read-data`; restore from another recovery point');
    if (!this.source.checksDigests && !createHash('sha256').update(data).digest().equals(digest)) {
      throw new RepositoryError('CORRUPT', `${at} does not match its digest`, 'run `hvprotect verify --read-data`; restore from another recovery point');
    }
    this.stats.chunksFetched++;
    this.stats.bytesFetched += data.length;
    return data;
  }

  /** A slot's bytes through the cache; concurrent asks for one slot share one fetch. */
  async chunk(slot: number): Promise<Buffer> {
    const hit = this.cache.get(slot);
    if (hit) {
      this.stats.cacheHits++;
      this.cache.delete(slot);
      this.cache.set(slot, hit);
      return hit;
    }
    const pending = this.inFlight.get(slot);
    if (pending) return pending;
    const p = this.fetchSlot(slot).then((data) => {
      this.remember(slot, data);
      return data;
    });
    this.inFlight.set(slot, p);
    try {
      return await p;
    } finally {
      this.inFlight.delete(slot);
    }
  }

  /** `length` bytes at `offset` of the disk; a range outside the disk is refused. */
  async read(offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.virtualSize) {
      throw new RepositoryError('INVALID_ARGUMENT', `read ${offset}+${length} outside the disk ${this.where} of ${this.virtualSize} bytes`);
    }
    if (length > MAX_READ_BYTES) throw new RepositoryError('INVALID_ARGUMENT', `read of ${length} bytes from ${this.where}: at most ${MAX_READ_BYTES} at once`);
    const out = Buffer.alloc(length);
    const first = Math.floor(offset / this.chunkSize);
    const end = Math.ceil((offset + length) / this.chunkSize);
    const parts = await Promise.all(Array.from({ length: end - first }, (_, i) => (this.isZeroSlot(first + i) ? undefined : this.chunk(first + i))));
    parts.forEach((data, i) => {
      if (!data) return; // already zero
      const start = (first + i) * this.chunkSize;
      const from = Math.max(offset, start);
      const to = Math.min(offset + length, start + data.length);
      data.copy(out, from - offset, from - start, to - start);
    });
    return out;
  }

  /**
   * The slots of [fromSlot, toSlot) in order, `inFlight` fetched (and verified) ahead of the one
   * being consumed: whoever consumes (a writer, an HTTP response) overlaps with the fetching.
   * `skipZero` leaves all-zero slots out (a sparse restore writes nothing for them).
   */
  async *slotsInOrder(fromSlot: number, toSlot: number, opts: { inFlight?: number; skipZero?: boolean } = {}): AsyncGenerator<{ slot: number; data: Buffer }> {
    const depth = Math.max(1, opts.inFlight ?? 16);
    if (this.source.readChunks) {
      yield* this.batchesInOrder(fromSlot, toSlot, depth, opts.skipZero ?? false);
      return;
    }
    const queue: Array<{ slot: number; data: Promise<Buffer> }> = [];
    let next = fromSlot;
    const fill = () => {
      while (queue.length < depth && next < toSlot) {
        const slot = next++;
        if (opts.skipZero && this.isZeroSlot(slot)) continue;
        const data = this.fetchSlot(slot);
        data.catch(() => undefined); // awaited in order below
        queue.push({ slot, data });
      }
    };
    fill();
    while (queue.length) {
      const head = queue.shift()!;
      const data = await head.data;
      fill();
      yield { slot: head.slot, data };
    }
  }

  /**
   * slotsInOrder over a source that reads many chunks at once: batches of `batchChunks` non-zero
   * slots, about `depth` chunks in flight (at least two batches), each chunk's length checked here
   * against its slot and its digest by the source.
   */
  private async *batchesInOrder(fromSlot: number, toSlot: number, depth: number, skipZero: boolean): AsyncGenerator<{ slot: number; data: Buffer }> {
    const per = Math.max(1, this.source.batchChunks ?? 16);
    const batches = Math.max(2, Math.ceil(depth / per));
    const queue: Array<{ slots: number[]; data: Promise<Buffer[]> }> = [];
    let next = fromSlot;
    const fill = () => {
      while (queue.length < batches && next < toSlot) {
        const slots: number[] = [];
        const zeros: number[] = [];
        while (slots.length < per && next < toSlot) {
          const slot = next++;
          if (!this.isZeroSlot(slot)) slots.push(slot);
          else if (!skipZero) zeros.push(slot);
          if (zeros.length && !skipZero) break; // keep the order: a zero slot ends the batch
        }
        const digests = slots.map((s) => this.digestOf(s).toString('hex'));
        const data = digests.length ? this.source.readChunks!(digests) : Promise.resolve([]);
        data.catch(() => undefined); // awaited in order below
        queue.push({ slots, data });
        if (zeros.length) queue.push({ slots: zeros, data: Promise.resolve(zeros.map((s) => Buffer.alloc(this.slotLength(s)))) });
      }
    };
    fill();
    while (queue.length) {
      const head = queue.shift()!;
      const data = await head.data;
      fill();
      if (data.length !== head.slots.length) throw new RepositoryError('CORRUPT', `${this.where}: asked for ${head.slots.length} chunks, got ${data.length}`, 'retry; run `hvprotect verify --read-data`');
      for (let i = 0; i < head.slots.length; i++) {
        const slot = head.slots[i];
        const d = data[i];
        if (d.length !== this.slotLength(slot)) {
          throw new RepositoryError('CORRUPT', `chunk ${this.digestOf(slot).toString('hex')} of ${this.where} (slot ${slot}, disk offset ${slot * this.chunkSize}) has ${d.length} bytes, the slot ${this.slotLength(slot)}`, 'run `hvprotect verify --read-data`; restore from another recovery point');
        }
        if (!this.isZeroSlot(slot)) {
          this.stats.chunksFetched++;
          this.stats.bytesFetched += d.length;
        }
        yield { slot, data: d };
      }
    }
  }

  private digestOf(slot: number): Buffer {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slotCount) throw new RepositoryError('INVALID_ARGUMENT', `slot ${slot} outside ${this.where} (${this.slotCount} slots)`);
    return this.slots.subarray(slot * DIGEST, (slot + 1) * DIGEST);
  }

  private remember(slot: number, data: Buffer): void {
    if (data.length > this.cacheBytes) return;
    this.cache.set(slot, data);
    this.cachedBytes += data.length;
    for (const [s, d] of this.cache) {
      if (this.cachedBytes <= this.cacheBytes) break;
      this.cache.delete(s);
      this.cachedBytes -= d.length;
    }
  }
}
