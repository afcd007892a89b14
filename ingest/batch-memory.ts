// Batch memory kept from one transfer to the next. A transfer reads its batches into at most
// batchesInFlight + 1 buffers of batchBytes (16 MiB by default; pipeline.ts). Made fresh for every
// transfer, they were 48-64 MiB of new external memory per express full in the agent, a process that
// lives for months: V8 counts external memory allocated since its last mark-compact against the
// old generation's room (a few MB in the agent), so every express full set off 3 mark-compacts there
// (`--trace-gc` through bench/backup-e2e, 2 Dec), and every buffer's pages were faulted in again.
// The buffers a transfer is done with are kept here for the next transfer (at most `maxIdleBytes`),
// and let go once no transfer has given one back for `idleMs`, so an agent between backups does
// not hold them.
const MiB = 1024 * 1024;

export class BatchMemory {
  private readonly idle: Buffer[] = [];
  private idleBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Buffers made, and buffers handed out again (for tests and the benchmark). */
  made = 0;
  reused = 0;

  constructor(
    readonly maxIdleBytes: number,
    readonly idleMs: number,
  ) {}

  /** A buffer of exactly `size` bytes, kept from an earlier batch when one is idle. Its bytes are not cleared. */
  take(size: number): Buffer {
    const i = this.idle.findIndex((b) => b.length === size);
    if (i >= 0) {
      const [b] = this.idle.splice(i, 1);
      this.idleBytes -= b.length;
      this.reused++;
      return b;
    }
    this.made++;
    return Buffer.allocUnsafeSlow(size);
  }

  /**
   * Gives a buffer back once nothing refers to it any more (its reads ended, its uploads settled):
   * the next take() may hand it to another transfer at once.
   */
  give(b: Buffer): void {
    if (this.idleBytes + b.length > this.maxIdleBytes) return; // beyond the cap: let it go
    this.idle.push(b);
    this.idleBytes += b.length;
    if (this.timer) this.timer.refresh();
    else {
      this.timer = setTimeout(() => this.drop(), this.idleMs);
      this.timer.unref();
    }
  }

  /** Lets every idle buffer go. */
  drop(): void {
    this.idle.length = 0;
    this.idleBytes = 0;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Bytes held idle now. */
  get held(): number {
    return this.idleBytes;
  }
}

/** The process's batch memory: what one transfer with the default tuning uses (5 × 16 MiB), for a minute. */
export const batchMemory = new BatchMemory(80 * MiB, 60_000);
