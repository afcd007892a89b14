import { promises as fsp } from 'node:fs';
import { VhdxError } from './errors';
import { LOG_SECTOR, VhdxFile } from './file';
import { readCurrentHeader, VhdxHeader, writeHeaders } from './header';
import { readRegionTable, RegionTable } from './region-table';
import { DiskMetadata, readMetadata } from './metadata';
import { Bat, PAYLOAD, SB_PRESENT, SECTOR_BITMAP_BLOCK } from './bat';
import { bitmapSliceOfBlock, markPresent, presenceRuns } from './sector-bitmap';
import { findActiveSequence, LogWriter, replayInMemory, replayOnDisk } from './log';
import { parentCandidates } from './parent-locator';
import { newGuid, normaliseGuid, ZERO_GUID } from './guid';

export interface ByteRange {
  offset: number;
  length: number;
}

export interface VhdxDisk {
  readonly path: string;
  readonly kind: 'fixed' | 'dynamic' | 'differencing';
  readonly virtualSize: number;
  readonly blockSize: number;
  readonly logicalSectorSize: 512 | 4096;
  readonly physicalSectorSize: 512 | 4096;
  readonly parent?: VhdxDisk;
  /** The Virtual Disk ID (SCSI page 83 identity); a checkpoint's AVHDX keeps its parent's. */
  readonly diskId: string;
  readonly virtualDiskId: string;
  /** Changes whenever the disk's data changes; a child's parent_linkage names it. */
  readonly dataWriteGuid: string;
  read(offset: number, length: number): Promise<Buffer>;
  readInto(buf: Buffer, offset: number): Promise<void>;
  allocatedRanges(): Promise<ByteRange[]>;
  write(offset: number, data: Buffer): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

export interface OpenOptions {
  writable?: boolean;
  /** Replay a pending log (default true): on disk when writable, in memory otherwise. False refuses such a file. */
  replayLog?: boolean;
}

/** Internal: a merge makes the parent's next DataWriteGuid one it already recorded in the child. */
export interface InternalOpenOptions extends OpenOptions {
  nextDataWriteGuid?: string;
}

const MIB = 1024 * 1024;
const MAX_CHAIN_DEPTH = 64;

export async function openVhdx(path: string, opts: OpenOptions = {}): Promise<VhdxDisk> {
  return Disk.open(path, opts, []);
}

/** One VHDX file of a chain; reads fall through to `parent` where this file holds nothing. */
export class Disk implements VhdxDisk {
  readonly kind: 'fixed' | 'dynamic' | 'differencing';
  private readonly sectorsPerBlock: number;
  /** Bitmap slice per PARTIALLY_PRESENT block, read on first use. */
  private readonly blockBitmaps = new Map<number, Buffer>();
  private log?: LogWriter;
  private writeQueue: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly file: VhdxFile,
    private header: VhdxHeader,
    private readonly regions: RegionTable,
    private readonly meta: DiskMetadata,
    private readonly bat: Bat,
    readonly parent: Disk | undefined,
    private readonly opts: InternalOpenOptions,
  ) {
    this.kind = meta.hasParent ? 'differencing' : meta.leaveBlocksAllocated ? 'fixed' : 'dynamic';
    this.sectorsPerBlock = meta.blockSize / meta.logicalSectorSize;
  }

  get virtualSize(): number { return this.meta.virtualSize; }
  get blockSize(): number { return this.meta.blockSize; }
  get logicalSectorSize(): 512 | 4096 { return this.meta.logicalSectorSize; }
  get physicalSectorSize(): 512 | 4096 { return this.meta.physicalSectorSize; }
  get diskId(): string { return this.meta.virtualDiskId; }
  get virtualDiskId(): string { return this.meta.virtualDiskId; }
  get dataWriteGuid(): string { return this.header.dataWriteGuid; }
  /** The parent locator's entries (differencing disks). */
  get parentLocator(): ReadonlyMap<string, string> | undefined { return this.meta.parentLocator; }

  static async open(path: string, opts: InternalOpenOptions, chain: string[]): Promise<Disk> {
    let real: string;
    try {
      real = await fsp.realpath(path);
    } catch (e) {
      throw new VhdxError(path, `cannot open: ${(e as Error).message}`);
    }
    if (chain.includes(real)) throw new VhdxError(path, `parent chain loop: ${[...chain, real].join(' -> ')}`);
    if (chain.length >= MAX_CHAIN_DEPTH) throw new VhdxError(path, `parent chain deeper than ${MAX_CHAIN_DEPTH}`);
    const writable = opts.writable === true;
    const file = await VhdxFile.open(path, writable);
    let parent: Disk | undefined;
    try {
      let header = await readCurrentHeader(file);
      const pending = await findActiveSequence(file, header);
      if (pending.length > 0) {
        if (opts.replayLog === false) {
          file.fail(`the log holds ${pending.length} entr${pending.length === 1 ? 'y' : 'ies'} that must be replayed before the disk can be read; open it with replayLog (in memory when read-only, on disk when writable)`);
        }
        if (writable) {
          await replayOnDisk(file, pending);
          header = await writeHeaders(file, header, { ...header, logGuid: ZERO_GUID });
        } else {
          replayInMemory(file, pending);
        }
      }
      const regions = await readRegionTable(file);
      const meta = await readMetadata(file, regions.metadata);
      const bat = await Bat.read(file, regions.bat, meta);
      if (writable) checkLogPlace(file, header, regions);
      if (meta.hasParent) parent = await Disk.openParent(file, meta, [...chain, real]);
      return new Disk(path, file, header, regions, meta, bat, parent, opts);
    } catch (e) {
      await file.close().catch(() => undefined);
      if (parent) await parent.close().catch(() => undefined);
      throw e;
    }
  }

  private static async openParent(file: VhdxFile, meta: DiskMetadata, chain: string[]): Promise<Disk> {
    const loc = meta.parentLocator!;
    const linkages = [loc.get('parent_linkage'), loc.get('parent_linkage2')].filter((v): v is string => !!v).map(normaliseGuid).filter(Boolean);
    if (linkages.length === 0) file.fail('parent locator has no parent_linkage');
    const candidates = parentCandidates(file.path, loc);
    if (candidates.length === 0) file.fail('parent locator names no parent path');
    const tried: string[] = [];
    for (const candidate of candidates) {
      try {
        await fsp.access(candidate);
      } catch {
        tried.push(candidate);
        continue;
      }
      // A parent is only ever read through its child; a checkpoint's parent is frozen.
      const parent = await Disk.open(candidate, { replayLog: true }, chain);
      if (!linkages.includes(parent.dataWriteGuid)) {
        await parent.close();
        file.fail(`parent linkage mismatch: ${candidate} has DataWriteGuid ${parent.dataWriteGuid}, the child expects ${linkages.join(' or ')} (the parent changed after this child was made)`);
      }
      if (parent.logicalSectorSize !== meta.logicalSectorSize) {
        await parent.close();
        file.fail(`parent ${candidate} has ${parent.logicalSectorSize}-byte sectors, the child ${meta.logicalSectorSize}`);
      }
      return parent;
    }
    file.fail(`parent not found (tried ${tried.join(', ')})`);
  }

  private checkRange(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.meta.virtualSize) {
      throw new VhdxError(this.path, `${what} of ${length} bytes at ${offset} is outside the ${this.meta.virtualSize}-byte virtual disk`);
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length, 'read');
    const buf = Buffer.allocUnsafe(length);
    await this.readRange(buf, 0, offset, length);
    return buf;
  }

  async readInto(buf: Buffer, offset: number): Promise<void> {
    this.checkRange(offset, buf.length, 'read');
    await this.readRange(buf, 0, offset, buf.length);
  }

  /**
   * Fill buf[at, at+length) with virtual bytes [offset, offset+length). Payload blocks that follow
   * each other in the file become one pread straight into `buf`; the preads run together.
   */
  async readRange(buf: Buffer, at: number, offset: number, length: number): Promise<void> {
    const ops: Promise<void>[] = [];
    let run: { fileOffset: number; at: number; length: number } | undefined;
    // Neighbouring stretches the parent supplies become one parent read, coalesced there in turn.
    let parentRun: { offset: number; at: number; length: number } | undefined;
    const flushParent = () => {
      if (parentRun) ops.push(this.parentRead(buf, parentRun.at, parentRun.offset, parentRun.length));
      parentRun = undefined;
    };
    const fromParent = (virtualOffset: number, bufAt: number, n: number) => {
      if (parentRun && parentRun.offset + parentRun.length === virtualOffset) parentRun.length += n;
      else {
        flushParent();
        parentRun = { offset: virtualOffset, at: bufAt, length: n };
      }
    };
    const flushRun = () => {
      if (run) ops.push(this.file.readInto(buf, run.at, run.length, run.fileOffset));
      run = undefined;
    };
    const fromFile = (fileOffset: number, bufAt: number, n: number) => {
      if (run && run.fileOffset + run.length === fileOffset && run.at + run.length === bufAt && run.length < 256 * MIB) run.length += n;
      else {
        flushRun();
        run = { fileOffset, at: bufAt, length: n };
      }
    };
    const { blockSize, logicalSectorSize } = this.meta;
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const block = Math.floor(pos / blockSize);
      const inBlock = pos - block * blockSize;
      const n = Math.min(blockSize - inBlock, end - pos);
      const bufAt = at + (pos - offset);
      const index = this.bat.payloadIndex(block);
      const state = this.bat.state(index);
      if (state === PAYLOAD.FULLY_PRESENT) {
        flushParent();
        fromFile(this.bat.offset(index) + inBlock, bufAt, n);
      } else if (state === PAYLOAD.PARTIALLY_PRESENT && this.parent) {
        const slice = await this.blockBitmap(block);
        const base = this.bat.offset(index);
        // Sector granularity; reads are sector aligned in practice, so widen and clip.
        const firstSector = Math.floor(inBlock / logicalSectorSize);
        const lastSector = Math.ceil((inBlock + n) / logicalSectorSize);
        for (const r of presenceRuns(slice, firstSector, lastSector)) {
          const from = Math.max(r.start * logicalSectorSize, inBlock);
          const to = Math.min(r.end * logicalSectorSize, inBlock + n);
          const rAt = bufAt + (from - inBlock);
          if (r.present) {
            flushParent();
            fromFile(base + from, rAt, to - from);
          } else {
            flushRun();
            fromParent(block * blockSize + from, rAt, to - from);
          }
        }
      } else if ((state === PAYLOAD.NOT_PRESENT || state === PAYLOAD.UNDEFINED) && this.parent) {
        flushRun();
        fromParent(pos, bufAt, n);
      } else {
        flushRun();
        flushParent();
        buf.fill(0, bufAt, bufAt + n);
      }
      pos += n;
    }
    flushRun();
    flushParent();
    await Promise.all(ops);
  }

  private async parentRead(buf: Buffer, at: number, offset: number, length: number): Promise<void> {
    const p = this.parent!;
    const inParent = Math.max(0, Math.min(length, p.virtualSize - offset));
    if (inParent > 0) await p.readRange(buf, at, offset, inParent);
    if (inParent < length) buf.fill(0, at + inParent, at + length);
  }

  private async blockBitmap(block: number): Promise<Buffer> {
    let slice = this.blockBitmaps.get(block);
    if (slice) return slice;
    const { chunkRatio } = this.bat.geometry;
    const chunk = Math.floor(block / chunkRatio);
    const sbIndex = this.bat.bitmapIndex(chunk);
    const { byteOffset, byteLength } = bitmapSliceOfBlock(block, chunkRatio, this.sectorsPerBlock);
    if (this.bat.state(sbIndex) !== SB_PRESENT) {
      this.file.fail(`payload block ${block} is PARTIALLY_PRESENT but its sector bitmap (chunk ${chunk}) is not present`);
    }
    slice = await this.file.readStruct(this.bat.offset(sbIndex) + byteOffset, byteLength, `sector bitmap of block ${block}`);
    this.blockBitmaps.set(block, slice);
    return slice;
  }

  /** What this file alone holds, in virtual bytes; `parentShows` marks where the parent shows through. */
  private async ownRanges(): Promise<{ own: ByteRange[]; parentShows: ByteRange[]; zeroed: ByteRange[] }> {
    const own: ByteRange[] = [];
    const parentShows: ByteRange[] = [];
    const zeroed: ByteRange[] = [];
    const { blockSize, virtualSize, logicalSectorSize } = this.meta;
    for (let block = 0; block < this.bat.geometry.payloadBlocks; block++) {
      const start = block * blockSize;
      const len = Math.min(blockSize, virtualSize - start);
      const state = this.bat.state(this.bat.payloadIndex(block));
      if (state === PAYLOAD.FULLY_PRESENT) own.push({ offset: start, length: len });
      else if (state === PAYLOAD.PARTIALLY_PRESENT && this.parent) {
        const slice = await this.blockBitmap(block);
        for (const r of presenceRuns(slice, 0, Math.ceil(len / logicalSectorSize))) {
          const range = { offset: start + r.start * logicalSectorSize, length: Math.min(r.end * logicalSectorSize, len) - r.start * logicalSectorSize };
          (r.present ? own : parentShows).push(range);
        }
      } else if ((state === PAYLOAD.NOT_PRESENT || state === PAYLOAD.UNDEFINED) && this.parent) {
        parentShows.push({ offset: start, length: len });
      } else if (this.parent) {
        zeroed.push({ offset: start, length: len });
      }
    }
    return { own, parentShows, zeroed };
  }

  /** What a merge must carry into the parent: this file's own data, and blocks it declares zero over the parent. */
  async mergeSource(): Promise<{ data: ByteRange[]; zeros: ByteRange[] }> {
    const r = await this.ownRanges();
    return { data: mergeRanges(r.own), zeros: mergeRanges(r.zeroed) };
  }

  async allocatedRanges(): Promise<ByteRange[]> {
    const { own, parentShows } = await this.ownRanges();
    if (!this.parent) return mergeRanges(own);
    const fromParent = intersectRanges(await this.parent.allocatedRanges(), mergeRanges(parentShows));
    return mergeRanges([...own, ...fromParent]);
  }

  // ---- writing ----------------------------------------------------------------------------
  //
  // Crash safety, the way the format intends: payload data first (new blocks are appended past
  // the end of the file, so nothing live is overwritten), fsync, then every metadata change (BAT
  // entries, sector bitmap bits) as one log entry, fsync, then the same sectors in place. A crash
  // before the log entry is durable leaves the old BAT (new blocks are unreferenced space); after
  // it, any VHDX reader replays the entry. Before the first write the header gets new
  // FileWriteGuid/DataWriteGuid and a LogGuid, written to the two header copies in turn; a clean
  // close clears LogGuid again. Overwrites of already allocated blocks need no metadata and are
  // durable at flush(), as on a disk. The log, not ordered fsyncs alone, because one torn 4 KiB
  // BAT sector would lose 512 entries that were already safe; the log makes it all-or-nothing.

  write(offset: number, data: Buffer): Promise<void> {
    const p = this.writeQueue.then(() => this.writeNow(offset, data));
    this.writeQueue = p.catch(() => undefined);
    return p;
  }

  private async beginSession(): Promise<LogWriter> {
    if (this.log) return this.log;
    const logGuid = newGuid();
    this.header = await writeHeaders(this.file, this.header, {
      ...this.header,
      fileWriteGuid: newGuid(),
      dataWriteGuid: this.opts.nextDataWriteGuid ?? newGuid(),
      logGuid,
    });
    this.log = new LogWriter(this.file, this.header.logOffset, this.header.logLength, logGuid);
    return this.log;
  }

  private async writeNow(offset: number, data: Buffer): Promise<void> {
    if (this.closed) throw new VhdxError(this.path, 'write after close');
    if (!this.file.writable) throw new VhdxError(this.path, 'write to a disk not opened writable');
    this.checkRange(offset, data.length, 'write');
    const { blockSize, logicalSectorSize } = this.meta;
    if (offset % logicalSectorSize !== 0 || data.length % logicalSectorSize !== 0) {
      throw new VhdxError(this.path, `write of ${data.length} bytes at ${offset} is not aligned to the ${logicalSectorSize}-byte logical sector`);
    }
    if (data.length === 0) return;
    const log = await this.beginSession();
    const dirtyBat = new Set<number>();
    const dirtyBitmapSectors = new Map<number, Buffer>();
    const touchedBitmapBlocks: number[] = [];
    const dataWrites: Promise<void>[] = [];
    let pos = offset;
    const end = offset + data.length;
    while (pos < end) {
      const block = Math.floor(pos / blockSize);
      const inBlock = pos - block * blockSize;
      const n = Math.min(blockSize - inBlock, end - pos);
      const chunk = data.subarray(pos - offset, pos - offset + n);
      const index = this.bat.payloadIndex(block);
      const state = this.bat.state(index);
      if (state === PAYLOAD.FULLY_PRESENT) {
        dataWrites.push(this.file.write(this.bat.offset(index) + inBlock, chunk));
      } else if (state === PAYLOAD.PARTIALLY_PRESENT && this.parent) {
        dataWrites.push(this.file.write(this.bat.offset(index) + inBlock, chunk));
        // Rewriting sectors that are already ours changes no metadata: no log entry, no fsync.
        const ss = this.meta.logicalSectorSize;
        const runs = presenceRuns(await this.blockBitmap(block), inBlock / ss, (inBlock + n) / ss);
        if (runs.some((r) => !r.present)) {
          await this.markSectors(block, inBlock, n, dirtyBat, dirtyBitmapSectors);
          touchedBitmapBlocks.push(block);
        }
      } else {
        const wholeBlock = n === Math.min(blockSize, this.meta.virtualSize - block * blockSize);
        const fromParent = this.parent && (state === PAYLOAD.NOT_PRESENT || state === PAYLOAD.UNDEFINED);
        const at = await this.allocate(blockSize);
        dataWrites.push(this.file.write(at + inBlock, chunk));
        if (fromParent && !wholeBlock) {
          // The rest of the block still comes from the parent: say which sectors are ours. The
          // bitmap exists before the BAT names the block partial, so a concurrent read finds it.
          await this.markSectors(block, inBlock, n, dirtyBat, dirtyBitmapSectors);
          this.bat.set(index, PAYLOAD.PARTIALLY_PRESENT, at);
          touchedBitmapBlocks.push(block);
        } else {
          // A fresh block reads as zeros where not written, which is what ZERO/NOT_PRESENT meant here.
          this.bat.set(index, PAYLOAD.FULLY_PRESENT, at);
        }
        dirtyBat.add(index);
      }
      pos += n;
    }
    await Promise.all(dataWrites);
    if (dirtyBat.size === 0 && dirtyBitmapSectors.size === 0) return;
    // Bitmap sectors go before BAT sectors so a split transaction never points a BAT entry at bits not yet set.
    const sectors: [number, Buffer][] = [...dirtyBitmapSectors.entries()];
    const batSectors = new Map<number, Buffer>();
    for (const index of dirtyBat) {
      const s = this.bat.sectorOf(index);
      batSectors.set(s.fileOffset, s.data);
    }
    sectors.push(...batSectors.entries());
    for (let i = 0; i < sectors.length; i += log.maxSectorsPerEntry) {
      await log.commit(new Map(sectors.slice(i, i + log.maxSectorsPerEntry)), this.file.size);
    }
    for (const block of touchedBitmapBlocks) this.blockBitmaps.delete(block);
  }

  /** Append `length` zeroed bytes at the next 1 MiB boundary of the file. */
  private async allocate(length: number): Promise<number> {
    const at = Math.ceil(this.file.size / MIB) * MIB;
    await this.file.truncate(at + length);
    return at;
  }

  /** Set the bitmap bits of sectors written in a block; allocates the chunk's sector bitmap when absent. */
  private async markSectors(block: number, inBlock: number, n: number, dirtyBat: Set<number>, dirty: Map<number, Buffer>): Promise<void> {
    const { chunkRatio } = this.bat.geometry;
    const chunk = Math.floor(block / chunkRatio);
    const sbIndex = this.bat.bitmapIndex(chunk);
    if (this.bat.state(sbIndex) !== SB_PRESENT) {
      this.bat.set(sbIndex, SB_PRESENT, await this.allocate(SECTOR_BITMAP_BLOCK));
      dirtyBat.add(sbIndex);
    }
    const sbOffset = this.bat.offset(sbIndex);
    const ss = this.meta.logicalSectorSize;
    const first = (block % chunkRatio) * this.sectorsPerBlock + inBlock / ss;
    const last = first + n / ss;
    // Bits of sectors [first, last) of the chunk, one 4 KiB bitmap sector (32768 sectors) at a time.
    for (let s = first; s < last; ) {
      const sectorOffset = sbOffset + Math.floor(s / 8 / LOG_SECTOR) * LOG_SECTOR;
      let buf = dirty.get(sectorOffset);
      if (!buf) {
        buf = await this.file.readStruct(sectorOffset, LOG_SECTOR, 'sector bitmap');
        dirty.set(sectorOffset, buf);
      }
      const sectorFirstBit = ((sectorOffset - sbOffset) / LOG_SECTOR) * LOG_SECTOR * 8;
      const upto = Math.min(last, sectorFirstBit + LOG_SECTOR * 8);
      markPresent(buf, s - sectorFirstBit, upto - sectorFirstBit);
      s = upto;
    }
  }

  async flush(): Promise<void> {
    await this.writeQueue;
    if (this.file.writable) await this.file.sync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.writeQueue;
    this.closed = true;
    try {
      if (this.log) {
        // Everything applied is made durable, then the log is declared empty.
        await this.file.sync();
        this.header = await writeHeaders(this.file, this.header, { ...this.header, logGuid: ZERO_GUID });
      }
    } finally {
      await this.file.close();
      if (this.parent) await this.parent.close();
    }
  }

  /** Internal, for the merge: the file's regions, to rewrite metadata items through the log. */
  async commitMetadata(sectors: Map<number, Buffer>): Promise<void> {
    const log = await this.beginSession();
    await log.commit(sectors, this.file.size);
  }

  get regionTable(): RegionTable { return this.regions; }
  get vhdxFile(): VhdxFile { return this.file; }
}

/** A writer appends to the log, so it must lie inside the file and apart from the BAT and metadata. */
function checkLogPlace(file: VhdxFile, h: VhdxHeader, r: RegionTable): void {
  const end = h.logOffset + h.logLength;
  if (h.logLength < MIB || end > file.size) file.fail(`log at ${h.logOffset}+${h.logLength} is empty or lies outside the file; cannot write`);
  for (const region of [r.bat, r.metadata]) {
    if (h.logOffset < region.fileOffset + region.length && region.fileOffset < end) file.fail('log overlaps the BAT or metadata region; cannot write');
  }
}

export function mergeRanges(ranges: ByteRange[]): ByteRange[] {
  const sorted = ranges.filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const out: ByteRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else out.push({ ...r });
  }
  return out;
}

/** Intersection of two sorted, merged range lists. */
export function intersectRanges(a: ByteRange[], b: ByteRange[]): ByteRange[] {
  const out: ByteRange[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const s = Math.max(a[i]!.offset, b[j]!.offset);
    const e = Math.min(a[i]!.offset + a[i]!.length, b[j]!.offset + b[j]!.length);
    if (s < e) out.push({ offset: s, length: e - s });
    if (a[i]!.offset + a[i]!.length < b[j]!.offset + b[j]!.length) i++;
    else j++;
  }
  return out;
}
