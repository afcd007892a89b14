import { checksumWithField, crc32c } from './crc32c';
import { readGuid, writeGuid, ZERO_GUID } from './guid';
import { LOG_SECTOR, VhdxFile } from './file';
import { VhdxHeader } from './header';

// Log: a circular buffer of entries at LogOffset, LogLength bytes, in 4 KiB sectors. Metadata
// changes (BAT, sector bitmaps, metadata items) are first written here, then to their place.
// Entry = descriptor sectors, then one data sector per data descriptor. CRC-32C over the whole
// entry (EntryLength bytes) with the checksum field as zero.
// Entry header (64 bytes):
//   0  Signature "loge"     u32
//   4  Checksum             u32
//   8  EntryLength          u32   multiple of 4 KiB
//   12 Tail                 u32   log offset of the oldest entry still needed (start of the sequence)
//   16 SequenceNumber       u64   > 0, +1 per entry
//   24 DescriptorCount      u32
//   28 Reserved             u32
//   32 LogGuid              GUID  must equal the header's LogGuid
//   48 FlushedFileOffset    u64   file size that was durable when the entry was written
//   56 LastFileOffset       u64   file size the entry needs after replay
// Descriptors (32 bytes; 126 fit after the header in the first sector, 128 in the next ones):
//   zero: "zero", Reserved u32, ZeroLength u64, FileOffset u64, SequenceNumber u64
//   data: "desc", TrailingBytes u32, LeadingBytes u64, FileOffset u64, SequenceNumber u64
// Data sector (4 KiB): "data", SequenceHigh u32, 4084 bytes, SequenceLow u32; the sector's real
// first 8 and last 4 bytes are the descriptor's LeadingBytes and TrailingBytes.
// Replay: the active sequence is the one whose head has the largest SequenceNumber and whose
// Tail leads through contiguous entries with consecutive numbers up to that head.

/** Most we read to search a log and hold replayed sectors in memory; real logs are 1 MiB. */
const MAX_LOG_LENGTH = 256 * 1024 * 1024;
const MAX_REPLAY_BYTES = 256 * 1024 * 1024;
const HEADER_SECTION_END = 192 * 1024;

export interface LogWrite {
  fileOffset: number;
  /** 4 KiB of data, or undefined for a run of zeros. */
  data?: Buffer;
  zeroLength?: number;
}

export interface LogEntry {
  position: number;
  length: number;
  tail: number;
  sequenceNumber: bigint;
  flushedFileOffset: number;
  lastFileOffset: number;
  writes: LogWrite[];
}

function descriptorSectors(count: number): number {
  return Math.ceil((count + 2) / 128);
}

/** Read a circular slice of the log image. */
function circular(log: Buffer, pos: number, length: number): Buffer {
  if (pos + length <= log.length) return log.subarray(pos, pos + length);
  return Buffer.concat([log.subarray(pos), log.subarray(0, length - (log.length - pos))]);
}

function parseEntry(log: Buffer, pos: number, logGuid: string, logRegion: { offset: number; length: number }, budget: { left: number }): LogEntry | undefined {
  const head = log.subarray(pos, pos + 64);
  if (head.toString('latin1', 0, 4) !== 'loge') return undefined;
  const length = head.readUInt32LE(8);
  const tail = head.readUInt32LE(12);
  const seq = head.readBigUInt64LE(16);
  const count = head.readUInt32LE(24);
  if (length === 0 || length % LOG_SECTOR !== 0 || length > log.length) return undefined;
  if (tail % LOG_SECTOR !== 0 || tail >= log.length || seq === 0n) return undefined;
  if (readGuid(head, 32) !== logGuid) return undefined;
  const descSectors = descriptorSectors(count);
  if (descSectors * LOG_SECTOR > length) return undefined;
  budget.left -= length;
  if (budget.left < 0) return undefined;
  const entry = circular(log, pos, length);
  if (checksumWithField(entry, 4) !== head.readUInt32LE(4)) return undefined;
  const writes: LogWrite[] = [];
  let dataSector = descSectors;
  for (let i = 0; i < count; i++) {
    const d = 64 + i * 32;
    const sig = entry.toString('latin1', d, d + 4);
    const fileOffset = Number(entry.readBigUInt64LE(d + 16));
    if (entry.readBigUInt64LE(d + 24) !== seq || fileOffset % LOG_SECTOR !== 0) return undefined;
    if (sig === 'zero') {
      const zeroLength = Number(entry.readBigUInt64LE(d + 8));
      if (zeroLength % LOG_SECTOR !== 0) return undefined;
      writes.push({ fileOffset, zeroLength });
    } else if (sig === 'desc') {
      if ((dataSector + 1) * LOG_SECTOR > length) return undefined;
      const s = entry.subarray(dataSector * LOG_SECTOR, (dataSector + 1) * LOG_SECTOR);
      const sSeq = (BigInt(s.readUInt32LE(4)) << 32n) | BigInt(s.readUInt32LE(4092));
      if (s.toString('latin1', 0, 4) !== 'data' || sSeq !== seq) return undefined;
      const data = Buffer.alloc(LOG_SECTOR);
      entry.copy(data, 0, d + 8, d + 16);
      s.copy(data, 8, 8, 4092);
      entry.copy(data, 4092, d + 4, d + 8);
      writes.push({ fileOffset, data });
      dataSector++;
    } else return undefined;
  }
  for (const w of writes) {
    const end = w.fileOffset + (w.data ? LOG_SECTOR : w.zeroLength!);
    // A log entry never rewrites the headers or the log itself.
    if (w.fileOffset < HEADER_SECTION_END || (w.fileOffset < logRegion.offset + logRegion.length && end > logRegion.offset)) return undefined;
  }
  return {
    position: pos,
    length,
    tail,
    sequenceNumber: seq,
    flushedFileOffset: Number(head.readBigUInt64LE(48)),
    lastFileOffset: Number(head.readBigUInt64LE(56)),
    writes,
  };
}

/** The active sequence of a log that needs replay, oldest first; empty when nothing is pending. */
export async function findActiveSequence(file: VhdxFile, header: VhdxHeader): Promise<LogEntry[]> {
  if (header.logGuid === ZERO_GUID || header.logLength === 0) return [];
  if (header.logLength > MAX_LOG_LENGTH) file.fail(`log of ${header.logLength} bytes is larger than the ${MAX_LOG_LENGTH} bytes this reader replays`);
  const log = await file.readStruct(header.logOffset, header.logLength, 'log');
  const region = { offset: header.logOffset, length: header.logLength };
  const byPosition = new Map<number, LogEntry>();
  // Bytes checksummed while searching: entries claiming to overlap could otherwise make it quadratic.
  const budget = { left: 4 * log.length + 16 * 1024 * 1024 };
  for (let pos = 0; pos < log.length; ) {
    const e = parseEntry(log, pos, header.logGuid, region, budget);
    if (budget.left < 0) file.fail('log search gave up: too many overlapping entries claim to be valid');
    if (e) byPosition.set(pos, e);
    // A valid entry's own sectors hold no other entry.
    pos += e && pos + e.length <= log.length ? e.length : LOG_SECTOR;
  }
  const heads = [...byPosition.values()].sort((a, b) => (a.sequenceNumber > b.sequenceNumber ? -1 : 1));
  for (const head of heads) {
    const seq: LogEntry[] = [];
    let pos = head.tail;
    let expect: bigint | undefined;
    while (seq.length <= byPosition.size) {
      const e = byPosition.get(pos);
      if (!e || (expect !== undefined && e.sequenceNumber !== expect) || e.sequenceNumber > head.sequenceNumber) break;
      seq.push(e);
      if (e === head) return seq;
      expect = e.sequenceNumber + 1n;
      pos = (pos + e.length) % log.length;
    }
  }
  return [];
}

function checkReplayable(file: VhdxFile, entries: LogEntry[]): void {
  let bytes = 0;
  for (const e of entries) {
    // No VHDX grows past 64 TiB of payload plus its metadata; a larger claim is damage, not a file size.
    if (e.lastFileOffset > 2 ** 47) file.fail(`log entry claims an absurd file size of ${e.lastFileOffset} bytes`);
    if (e.flushedFileOffset > file.size) {
      file.fail(`truncated: the log expects ${e.flushedFileOffset} bytes on disk but the file has ${file.size}`);
    }
    for (const w of e.writes) bytes += w.data ? LOG_SECTOR : w.zeroLength!;
  }
  if (bytes > MAX_REPLAY_BYTES) file.fail(`log replay would write ${bytes} bytes, more than the ${MAX_REPLAY_BYTES} allowed`);
}

/** Replay in memory: readers of `file` see the replayed state, the file is untouched. */
export function replayInMemory(file: VhdxFile, entries: LogEntry[]): void {
  checkReplayable(file, entries);
  for (const e of entries) {
    for (const w of e.writes) {
      if (w.data) file.overlaySector(w.fileOffset, w.data);
      else for (let o = 0; o < w.zeroLength!; o += LOG_SECTOR) file.overlaySector(w.fileOffset + o, Buffer.alloc(LOG_SECTOR));
    }
    if (e.lastFileOffset > file.logicalSize) file.logicalSize = e.lastFileOffset;
  }
}

/** Replay onto the file and make it durable; the caller then clears LogGuid in the header. */
export async function replayOnDisk(file: VhdxFile, entries: LogEntry[]): Promise<void> {
  checkReplayable(file, entries);
  for (const e of entries) {
    for (const w of e.writes) {
      if (w.data) await file.write(w.fileOffset, w.data);
      else {
        const zeros = Buffer.alloc(Math.min(w.zeroLength!, 1024 * 1024));
        for (let o = 0; o < w.zeroLength!; o += zeros.length) await file.write(w.fileOffset + o, zeros.subarray(0, Math.min(zeros.length, w.zeroLength! - o)));
      }
    }
    if (e.lastFileOffset > file.size) await file.truncate(Math.ceil(e.lastFileOffset / (1024 * 1024)) * 1024 * 1024);
  }
  await file.sync();
}

/**
 * Appends entries to the log of a disk open for writing. Each entry is its own sequence (Tail =
 * its own position) because every earlier entry was applied before it was written and made
 * durable by the fsync that precedes it; a torn entry fails its checksum and the previous one,
 * already applied, is the one a replay repeats — harmless.
 */
export class LogWriter {
  private position = 0;
  private sequence = 1n;

  constructor(
    private readonly file: VhdxFile,
    private readonly logOffset: number,
    private readonly logLength: number,
    private readonly logGuid: string,
  ) {}

  /** Most 4 KiB sectors one entry may carry in this log. */
  get maxSectorsPerEntry(): number {
    return Math.min(4000, Math.floor(this.logLength / LOG_SECTOR) - 2);
  }

  /**
   * Commit `sectors` (4 KiB aligned file offsets → 4 KiB contents) atomically: log entry, fsync,
   * then write them in place. The caller has already made the data they point at durable.
   */
  async commit(sectors: Map<number, Buffer>, lastFileOffset: number): Promise<void> {
    const offsets = [...sectors.keys()].sort((a, b) => a - b);
    const descSectors = descriptorSectors(offsets.length);
    const length = (descSectors + offsets.length) * LOG_SECTOR;
    if (length > this.logLength) throw new Error(`log entry of ${length} bytes exceeds the log`);
    if (this.position + length > this.logLength) this.position = 0;
    const entry = Buffer.alloc(length);
    const seq = this.sequence;
    entry.write('loge', 0, 'latin1');
    entry.writeUInt32LE(length, 8);
    entry.writeUInt32LE(this.position, 12);
    entry.writeBigUInt64LE(seq, 16);
    entry.writeUInt32LE(offsets.length, 24);
    writeGuid(entry, 32, this.logGuid);
    entry.writeBigUInt64LE(BigInt(this.file.size), 48);
    entry.writeBigUInt64LE(BigInt(Math.max(lastFileOffset, this.file.size)), 56);
    offsets.forEach((fileOffset, i) => {
      const data = sectors.get(fileOffset)!;
      const d = 64 + i * 32;
      entry.write('desc', d, 'latin1');
      data.copy(entry, d + 4, 4092, 4096);
      data.copy(entry, d + 8, 0, 8);
      entry.writeBigUInt64LE(BigInt(fileOffset), d + 16);
      entry.writeBigUInt64LE(seq, d + 24);
      const s = (descSectors + i) * LOG_SECTOR;
      entry.write('data', s, 'latin1');
      entry.writeUInt32LE(Number(seq >> 32n), s + 4);
      data.copy(entry, s + 8, 8, 4092);
      entry.writeUInt32LE(Number(seq & 0xffffffffn), s + 4092);
    });
    entry.writeUInt32LE(crc32c(entry), 4);
    // Durable before the entry: the data the new metadata points at, and the previous entry's in-place writes.
    await this.file.sync();
    await this.file.write(this.logOffset + this.position, entry);
    await this.file.sync();
    for (const fileOffset of offsets) await this.file.write(fileOffset, sectors.get(fileOffset)!);
    this.position += length;
    this.sequence++;
  }
}
