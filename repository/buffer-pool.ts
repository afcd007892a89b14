// Reused memory for upload bodies. A chunk batch body (~4 MiB) used to be a fresh allocation per
// request: new pages to fault in and zero, and external memory that keeps V8's GC busy. Bodies
// now land in pooled ArrayBuffers (sizes rounded up to a class), are handed to an encoder worker
// (transferred, not copied) and come back with its reply. Only buffers this pool made are ever
// transferred or taken back, so no other Buffer can lose its memory.

export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private readonly made = new WeakSet<ArrayBuffer>();
  private pooledBytes = 0;

  constructor(
    /** Capacities are multiples of this. */
    private readonly classBytes = 1024 * 1024,
    /** Larger requests get a plain allocation. */
    private readonly maxCapacity = 32 * 1024 * 1024,
    /** Idle memory the pool may keep. */
    private readonly maxPooledBytes = 64 * 1024 * 1024,
  ) {}

  /** A Buffer of `length` bytes (contents undefined) over a pooled ArrayBuffer when it fits. */
  take(length: number): Buffer {
    const capacity = Math.max(1, Math.ceil(length / this.classBytes)) * this.classBytes;
    // Small bodies (index patches, single digests) are not worth a class-sized buffer.
    if (length < this.classBytes / 4 || capacity > this.maxCapacity) return Buffer.allocUnsafeSlow(length);
    const ab = this.free.get(capacity)?.pop();
    if (ab) {
      this.pooledBytes -= capacity;
      return Buffer.from(ab, 0, length);
    }
    const fresh = new ArrayBuffer(capacity);
    this.made.add(fresh);
    return Buffer.from(fresh, 0, length);
  }

  /** True for memory this pool made (safe to transfer as a whole). */
  owns(ab: ArrayBufferLike): boolean {
    return ab instanceof ArrayBuffer && this.made.has(ab);
  }

  /**
   * Gives memory back. The caller must hold no view of it any more, and it must be memory this
   * pool made: either still the same object (owns() is true), or one that came back from a
   * worker it was transferred to (a transfer makes a new ArrayBuffer object; `transferred`).
   */
  give(ab: ArrayBuffer, transferred = false): void {
    if (!transferred && !this.made.has(ab)) return;
    if (ab.byteLength === 0 || ab.byteLength % this.classBytes !== 0 || ab.byteLength > this.maxCapacity) return;
    if (this.pooledBytes + ab.byteLength > this.maxPooledBytes) return;
    this.made.add(ab);
    const list = this.free.get(ab.byteLength) ?? [];
    if (list.includes(ab)) return;
    list.push(ab);
    this.free.set(ab.byteLength, list);
    this.pooledBytes += ab.byteLength;
  }
}

/** The process-wide pool for storage API request bodies. */
export const bodyPool = new BufferPool();
