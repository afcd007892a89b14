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

export class BufferPool {
  private readonly free = new Map<number, SharedArrayBuffer[]>();
  private readonly ids = new WeakMap<SharedArrayBuffer, number>();
  private nextId = 1;
  private pooledBytes = 0;
  private readonly dropListeners = new Set<(id: number) => void>();

  constructor(
    /** Capacities are multiples of this. */
    private readonly classBytes = 1024 * 1024,
    /** Larger requests get a plain allocation. */
    private readonly maxCapacity = 32 * 1024 * 1024,
    /** Idle memory the pool may keep. */
    private readonly maxPooledBytes = 64 * 1024 * 1024,
  ) {}

  /** A Buffer of `length` bytes (contents undefined) over pooled memory when it fits. */
  take(length: number): Buffer {
    const capacity = Math.max(1, Math.ceil(length / this.classBytes)) * this.classBytes;
    // Small bodies (index patches, single digests) are not worth a class-sized buffer.
    if (length < this.classBytes / 4 || capacity > this.maxCapacity) return Buffer.allocUnsafeSlow(length);
    const sab = this.free.get(capacity)?.pop();
    if (sab) {
      this.pooledBytes -= capacity;
      return Buffer.from(sab, 0, length);
    }
    const fresh = new SharedArrayBuffer(capacity);
    this.ids.set(fresh, this.nextId++);
    return Buffer.from(fresh, 0, length);
  }

  /** The pool's id for memory it made (stable for the memory's life), else undefined. */
  idOf(ab: ArrayBufferLike): number | undefined {
    return ab instanceof SharedArrayBuffer ? this.ids.get(ab) : undefined;
  }

  /**
   * Calls `listener` with the id of memory the pool lets go of (over its idle limit): whoever
   * was sent that memory by id (an encoder worker) can drop it. Returns the unsubscribe.
   */
  onDrop(listener: (id: number) => void): () => void {
    this.dropListeners.add(listener);
    return () => this.dropListeners.delete(listener);
  }

  /** True for memory this pool made. */
  owns(ab: ArrayBufferLike): boolean {
    return this.idOf(ab) !== undefined;
  }

  /**
   * Gives memory back; ignored for memory the pool did not make. Nothing may read or write it
   * after this (the next take hands it out): the caller and whoever it lent the memory to must
   * be done with it.
   */
  give(ab: ArrayBufferLike): void {
    const id = this.idOf(ab);
    if (id === undefined) return;
    const sab = ab as SharedArrayBuffer;
    const list = this.free.get(sab.byteLength) ?? [];
    if (list.includes(sab)) return;
    if (this.pooledBytes + sab.byteLength > this.maxPooledBytes) {
      for (const listener of this.dropListeners) listener(id);
      return;
    }
    list.push(sab);
    this.free.set(sab.byteLength, list);
    this.pooledBytes += sab.byteLength;
  }
}

/** The process-wide pool for storage API request bodies. */
export const bodyPool = new BufferPool();
