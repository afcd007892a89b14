// Reused memory for upload bodies. A chunk batch body (~4 MiB) used to be a fresh allocation per
// request: new pages to fault in and zero, and external memory that keeps V8's GC busy. Bodies
// land in pooled memory (sizes rounded up to a class) and are checked and stored by an encoder
// worker, then given back.
//
// The memory is a SharedArrayBuffer that the worker is sent once and then names by id: no
// ArrayBuffer object is made per request on either thread. Transferring an ArrayBuffer to the
// worker and back instead made a new ArrayBuffer object on each side per request, V8 counts each
// as new external memory, and the old one's count only drops at a full GC: the storage API ran
// a full mark-compact every ~70 ms of an ingest (199 in 20 s), on the main thread and two
// concurrent markers (bench/repository-ingest.md).
//
// The pool makes at most `maxPoolBytes` of such memory and never lets go of it: memory it let go
// of would be freed only once a full GC had run on the main thread and on every worker it was
// sent to, which allocate little and seldom run one (letting go over an idle limit instead put
// 112 MiB on the server's RSS under 24 uploads at once).
//
// The budget is also the bound on upload bodies held at once: an upload that finds it spent
// waits (`lend`), its body unread, so TCP holds the agent back, until a body is given back. Two
// encoder threads store ~200 MB/s, so 48 MiB of bodies queued is ~¼ s of their work; an agent
// sends 4 batches × 6 uploads of 4 MiB at once (ingest/pipeline.ts), and with plain memory past
// the budget a single backup's uploads put ~90 MiB of bodies on the server's RSS (its peak
// 336-343 MiB in bench/backup-e2e.ts). Other callers (`take`: restores' reads) get plain memory
// past the budget rather than wait.

export class BufferPool {
  private readonly free = new Map<number, SharedArrayBuffer[]>();
  private readonly ids = new WeakMap<SharedArrayBuffer, number>();
  private nextId = 1;
  /** Lends waiting for memory, first come first served. */
  private readonly waiting: Array<{ length: number; grant: (b: Buffer) => void; timer: NodeJS.Timeout }> = [];
  /** Bytes of the memory this pool made that is still alive (lent out or idle). */
  private madeBytes = 0;
  /** Memory lent and never given back (a request that failed) stops counting once collected. */
  private readonly collected = new FinalizationRegistry<number>((bytes) => {
    this.madeBytes -= bytes;
    this.serveWaiting();
  });

  constructor(
    /** Capacities are multiples of this. */
    private readonly classBytes = 1024 * 1024,
    /** Larger requests get a plain allocation. */
    private readonly maxCapacity = 32 * 1024 * 1024,
    /** Pooled memory made in all (lent out and idle): the bound on bodies held (see above). */
    private readonly maxPoolBytes = 48 * 1024 * 1024,
    /**
     * How long a lend waits for memory before it gets plain memory: memory lent to a request
     * that never gave it back counts until a GC collects it, and must not stall uploads.
     */
    private readonly maxWaitMs = 2000,
  ) {}

  /** A Buffer of `length` bytes (contents undefined) over pooled memory when it fits. */
  take(length: number): Buffer {
    return this.tryTake(length) ?? Buffer.allocUnsafeSlow(length);
  }

  /**
   * Calls `grant` with a Buffer of `length` bytes, at once when `take` would give pooled memory
   * or the request is not one the pool serves, else as soon as memory is given back (at most
   * `maxWaitMs`, then plain memory). Returns a function that withdraws a lend not yet granted.
   */
  lend(length: number, grant: (b: Buffer) => void): () => void {
    const now = this.waiting.length === 0 ? this.tryTake(length) : undefined;
    if (now !== undefined || !this.pooled(length)) {
      grant(now ?? Buffer.allocUnsafeSlow(length));
      return () => undefined;
    }
    const entry = {
      length,
      grant,
      timer: setTimeout(() => {
        this.withdraw(entry);
        grant(Buffer.allocUnsafeSlow(length));
      }, this.maxWaitMs).unref(),
    };
    this.waiting.push(entry);
    return () => {
      if (this.withdraw(entry)) clearTimeout(entry.timer);
    };
  }

  /** Lends waiting for memory. */
  get waitingLends(): number {
    return this.waiting.length;
  }

  private withdraw(entry: { length: number }): boolean {
    const i = this.waiting.indexOf(entry as (typeof this.waiting)[number]);
    if (i < 0) return false;
    this.waiting.splice(i, 1);
    return true;
  }

  private capacityOf(length: number): number {
    return Math.max(1, Math.ceil(length / this.classBytes)) * this.classBytes;
  }

  /** Whether requests of this length are served from pooled memory. */
  private pooled(length: number): boolean {
    // Small bodies (index patches, single digests) are not worth a class-sized buffer.
    return length >= this.classBytes / 4 && this.capacityOf(length) <= this.maxCapacity;
  }

  /** Pooled memory for `length` bytes if there is some to lend now (idle, of its class or the next larger one that is idle, or new within the budget). */
  private tryTake(length: number): Buffer | undefined {
    if (!this.pooled(length)) return Buffer.allocUnsafeSlow(length);
    const capacity = this.capacityOf(length);
    let sab = this.free.get(capacity)?.pop();
    if (!sab && this.madeBytes + capacity > this.maxPoolBytes) {
      // Over the budget: the smallest idle memory that is large enough.
      let best: number | undefined;
      for (const [cap, list] of this.free) if (cap > capacity && list.length && (best === undefined || cap < best)) best = cap;
      if (best !== undefined) sab = this.free.get(best)!.pop();
    }
    if (sab) return Buffer.from(sab, 0, length);
    if (this.madeBytes + capacity > this.maxPoolBytes) return undefined;
    const fresh = new SharedArrayBuffer(capacity);
    this.madeBytes += capacity;
    this.collected.register(fresh, capacity);
    this.ids.set(fresh, this.nextId++);
    return Buffer.from(fresh, 0, length);
  }

  /** The pool's id for memory it made (stable for the memory's life), else undefined. */
  idOf(ab: ArrayBufferLike): number | undefined {
    return ab instanceof SharedArrayBuffer ? this.ids.get(ab) : undefined;
  }

  /**
   * Gives memory back; ignored for memory the pool did not make. Nothing may read or write it
   * after this (the next take hands it out): the caller and whoever it lent the memory to must
   * be done with it.
   */
  give(ab: ArrayBufferLike): void {
    if (this.idOf(ab) === undefined) return;
    const sab = ab as SharedArrayBuffer;
    const list = this.free.get(sab.byteLength) ?? [];
    if (list.includes(sab)) return;
    list.push(sab);
    this.free.set(sab.byteLength, list);
    this.serveWaiting();
  }

  /** Grants waiting lends in order while there is memory for the first. */
  private serveWaiting(): void {
    while (this.waiting.length) {
      const b = this.tryTake(this.waiting[0].length);
      if (!b) break;
      const w = this.waiting.shift()!;
      clearTimeout(w.timer);
      w.grant(b);
    }
  }
}

/** The process-wide pool for storage API request bodies. */
export const bodyPool = new BufferPool();
