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
// 112 MiB on the server's RSS under 24 uploads at once). Past the budget a body gets plain memory.

export class BufferPool {
  private readonly free = new Map<number, SharedArrayBuffer[]>();
  private readonly ids = new WeakMap<SharedArrayBuffer, number>();
  private nextId = 1;
  /** Bytes of the memory this pool made that is still alive (lent out or idle). */
  private madeBytes = 0;
  /** Memory lent and never given back (a request that failed) stops counting once collected. */
  private readonly collected = new FinalizationRegistry<number>((bytes) => {
    this.madeBytes -= bytes;
  });

  constructor(
    /** Capacities are multiples of this. */
    private readonly classBytes = 1024 * 1024,
    /** Larger requests get a plain allocation. */
    private readonly maxCapacity = 32 * 1024 * 1024,
    /**
     * Pooled memory made in all (lent out and idle): 24 uploads of 4 MiB at once (four agents at
     * their defaults) and restores' reads fit.
     */
    private readonly maxPoolBytes = 128 * 1024 * 1024,
  ) {}

  /** A Buffer of `length` bytes (contents undefined) over pooled memory when it fits. */
  take(length: number): Buffer {
    const capacity = Math.max(1, Math.ceil(length / this.classBytes)) * this.classBytes;
    // Small bodies (index patches, single digests) are not worth a class-sized buffer.
    if (length < this.classBytes / 4 || capacity > this.maxCapacity) return Buffer.allocUnsafeSlow(length);
    const sab = this.free.get(capacity)?.pop();
    if (sab) return Buffer.from(sab, 0, length);
    if (this.madeBytes + capacity > this.maxPoolBytes) return Buffer.allocUnsafeSlow(length);
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
  }
}

/** The process-wide pool for storage API request bodies. */
export const bodyPool = new BufferPool();
