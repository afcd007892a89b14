import { promises as fsp } from 'node:fs';
import { VhdxError } from './errors';

/** 4 KiB: the unit of the log and of every metadata structure write. */
export const LOG_SECTOR = 4096;

/**
 * One open VHDX file: a single fd, exact-length positional reads that fail with the file's name
 * when the file is shorter than a structure claims, and an overlay of sectors from a log replayed
 * in memory (a read-only open must see the replayed state without changing the file).
 */
export class VhdxFile {
  private overlay = new Map<number, Buffer>();
  private overlayKeys: number[] = [];
  /** Size as the reader sees it: the real size, or LastFileOffset of a log replayed in memory. */
  logicalSize: number;

  private constructor(
    readonly path: string,
    readonly handle: fsp.FileHandle,
    public size: number,
    readonly writable: boolean,
  ) {
    this.logicalSize = size;
  }

  static async open(path: string, writable: boolean): Promise<VhdxFile> {
    let handle: fsp.FileHandle;
    try {
      // Checked before opening: opening a FIFO a locator names would block forever.
      if (!(await fsp.stat(path)).isFile()) throw new VhdxError(path, 'not a regular file');
      handle = await fsp.open(path, writable ? 'r+' : 'r');
    } catch (e) {
      if (e instanceof VhdxError) throw e;
      throw new VhdxError(path, `cannot open: ${(e as Error).message}`);
    }
    const st = await handle.stat();
    if (!st.isFile()) {
      await handle.close();
      throw new VhdxError(path, 'not a regular file');
    }
    return new VhdxFile(path, handle, st.size, writable);
  }

  fail(defect: string): never {
    throw new VhdxError(this.path, defect);
  }

  /**
   * Read exactly `length` bytes of structure `what`; past the end of the file is a defect. Bounded by
   * the real size, never a replayed LastFileOffset, so no claim in the file makes us allocate more
   * memory than the file holds.
   */
  async readStruct(offset: number, length: number, what: string): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      this.fail(`truncated: ${what} at ${offset}+${length} lies beyond the end of the file (${this.size} bytes)`);
    }
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(buf, 0, length, offset);
    return buf;
  }

  /** Fill buf[at, at+length) from file offset `offset`; bytes past the real end read as zero. */
  async readInto(buf: Buffer, at: number, length: number, offset: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      if (pos >= this.size) {
        buf.fill(0, at + done, at + length);
        break;
      }
      const want = Math.min(length - done, this.size - pos, 0x40000000);
      const { bytesRead } = await this.handle.read(buf, at + done, want, pos);
      if (bytesRead === 0) {
        buf.fill(0, at + done, at + length);
        break;
      }
      done += bytesRead;
    }
    if (this.overlayKeys.length > 0) this.applyOverlay(buf, at, length, offset);
  }

  private applyOverlay(buf: Buffer, at: number, length: number, offset: number): void {
    const end = offset + length;
    for (const key of this.overlayKeys) {
      if (key + LOG_SECTOR <= offset || key >= end) continue;
      const sector = this.overlay.get(key)!;
      const from = Math.max(key, offset);
      const to = Math.min(key + LOG_SECTOR, end);
      sector.copy(buf, at + (from - offset), from - key, to - key);
    }
  }

  /** Replace a 4 KiB sector as seen by readers, without touching the file (in-memory log replay). */
  overlaySector(offset: number, data: Buffer): void {
    if (!this.overlay.has(offset)) {
      this.overlayKeys.push(offset);
      this.overlayKeys.sort((a, b) => a - b);
    }
    this.overlay.set(offset, Buffer.from(data));
  }

  async write(offset: number, data: Buffer): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
    if (offset + data.length > this.size) this.size = offset + data.length;
    if (this.size > this.logicalSize) this.logicalSize = this.size;
  }

  async truncate(size: number): Promise<void> {
    await this.handle.truncate(size);
    this.size = size;
    this.logicalSize = size;
  }

  async sync(): Promise<void> {
    await this.handle.sync();
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
