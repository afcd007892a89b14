// The lab's Resilient Change Tracking: an append-only log per disk, next to its base VHDX.
// Every guest write appends (and fsyncs) its range before the data reaches the disk, so the log
// can over-report a write cut off by a crash but never miss one. A change-tracking id names a
// point in the log: `rct:<epoch>:<seq>`, seq = number of records written so far in that epoch.
// Resetting tracking (migration outside a cluster, a restored disk) starts a new epoch: a new log
// with a fresh uuid, so every older id becomes unanswerable.
//
// File format (little-endian):
//   header, 64 bytes:  0 magic "HVPRCT01" | 8 epoch uuid, 36 ASCII bytes | 44 zero pad
//                      48 u32 version = 1 | 52 u32 record size = 32 | 56 u32 crc32 of bytes 0..56 | 60 zero
//   record, 32 bytes:  0 magic "RCTR" | 4 u32 crc32 of bytes 8..32 | 8 u64 seq | 16 u64 offset | 24 u64 length
// Record i (0-based) has seq i+1. A torn last record (crash during append) is ignored and cut off
// by the next append; a bad record anywhere else makes the log unanswerable ("damaged").
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { crc32 } from 'node:zlib';
import { writeFileDurable } from '../../repository/durable';

const HEADER_SIZE = 64;
const RECORD_SIZE = 32;
const HEADER_MAGIC = 'HVPRCT01';
const RECORD_MAGIC = 'RCTR';
/** Upper bound on a sane log, so a hostile size never turns into a huge allocation. */
const MAX_RECORDS_READ = 50_000_000;

export interface Range {
  offset: number;
  length: number;
}

export interface TrackingPoint {
  epoch: string;
  seq: number;
}

export class ChangeTrackingLogError extends Error {
  override readonly name = 'ChangeTrackingLogError';
  constructor(readonly file: string, readonly defect: string) {
    super(`${file}: ${defect}`);
  }
}

const ID_RE = /^rct:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):(0|[1-9][0-9]{0,15})$/;

export function formatTrackingId(p: TrackingPoint): string {
  return `rct:${p.epoch}:${p.seq}`;
}

/** Parses `rct:<epoch>:<seq>`; undefined for anything else. */
export function parseTrackingId(id: unknown): TrackingPoint | undefined {
  if (typeof id !== 'string') return undefined;
  const m = ID_RE.exec(id);
  if (!m) return undefined;
  const seq = Number(m[2]);
  if (!Number.isSafeInteger(seq)) return undefined;
  return { epoch: m[1], seq };
}

function header(epoch: string): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.write(HEADER_MAGIC, 0, 'latin1');
  b.write(epoch, 8, 'latin1');
  b.writeUInt32LE(1, 48);
  b.writeUInt32LE(RECORD_SIZE, 52);
  b.writeUInt32LE(crc32(b.subarray(0, 56)), 56);
  return b;
}

function record(seq: number, r: Range): Buffer {
  const b = Buffer.alloc(RECORD_SIZE);
  b.write(RECORD_MAGIC, 0, 'latin1');
  b.writeBigUInt64LE(BigInt(seq), 8);
  b.writeBigUInt64LE(BigInt(r.offset), 16);
  b.writeBigUInt64LE(BigInt(r.length), 24);
  b.writeUInt32LE(crc32(b.subarray(8, 32)), 4);
  return b;
}

/** Start a new tracking epoch for a disk (creates or replaces the log). Returns the new epoch. */
export async function resetTrackingLog(file: string): Promise<string> {
  const epoch = randomUUID();
  await writeFileDurable(file, header(epoch));
  return epoch;
}

async function readHeader(fh: fsp.FileHandle, file: string): Promise<{ epoch: string; size: number }> {
  const st = await fh.stat();
  if (st.size < HEADER_SIZE) throw new ChangeTrackingLogError(file, `truncated: ${st.size} bytes, header needs ${HEADER_SIZE}`);
  const h = Buffer.alloc(HEADER_SIZE);
  await fh.read(h, 0, HEADER_SIZE, 0);
  if (h.toString('latin1', 0, 8) !== HEADER_MAGIC) throw new ChangeTrackingLogError(file, 'bad magic: not a change-tracking log');
  if (h.readUInt32LE(56) !== crc32(h.subarray(0, 56))) throw new ChangeTrackingLogError(file, 'header checksum mismatch');
  if (h.readUInt32LE(48) !== 1 || h.readUInt32LE(52) !== RECORD_SIZE) {
    throw new ChangeTrackingLogError(file, `unsupported version ${h.readUInt32LE(48)} / record size ${h.readUInt32LE(52)}`);
  }
  return { epoch: h.toString('latin1', 8, 44), size: st.size };
}

function decode(b: Buffer, at: number, expectSeq: number): Range | undefined {
  if (b.toString('latin1', at, at + 4) !== RECORD_MAGIC) return undefined;
  if (b.readUInt32LE(at + 4) !== crc32(b.subarray(at + 8, at + 32))) return undefined;
  if (Number(b.readBigUInt64LE(at + 8)) !== expectSeq) return undefined;
  return { offset: Number(b.readBigUInt64LE(at + 16)), length: Number(b.readBigUInt64LE(at + 24)) };
}

/** The log's current point: its epoch and the seq of its last complete record. */
export async function currentTrackingPoint(file: string): Promise<TrackingPoint> {
  const fh = await fsp.open(file, 'r');
  try {
    const { epoch, size } = await readHeader(fh, file);
    let n = Math.floor((size - HEADER_SIZE) / RECORD_SIZE);
    if (n > 0) {
      const last = Buffer.alloc(RECORD_SIZE);
      await fh.read(last, 0, RECORD_SIZE, HEADER_SIZE + (n - 1) * RECORD_SIZE);
      if (!decode(last, 0, n)) n -= 1; // torn by a crash during append
    }
    return { epoch, seq: n };
  } finally {
    await fh.close();
  }
}

/**
 * Append written ranges and fsync. Call under the lab lock, before the data goes to the disk.
 * Returns the tracking point after the last appended record.
 */
export async function appendWrites(file: string, ranges: Range[]): Promise<TrackingPoint> {
  const fh = await fsp.open(file, 'r+');
  try {
    const { epoch, size } = await readHeader(fh, file);
    let n = Math.floor((size - HEADER_SIZE) / RECORD_SIZE);
    if (n > 0) {
      const last = Buffer.alloc(RECORD_SIZE);
      await fh.read(last, 0, RECORD_SIZE, HEADER_SIZE + (n - 1) * RECORD_SIZE);
      if (!decode(last, 0, n)) n -= 1;
    }
    const end = HEADER_SIZE + n * RECORD_SIZE;
    if (end !== size) await fh.truncate(end);
    if (ranges.length > 0) {
      const buf = Buffer.concat(ranges.map((r, i) => record(n + i + 1, r)));
      await fh.write(buf, 0, buf.length, end);
      await fh.sync();
    }
    return { epoch, seq: n + ranges.length };
  } finally {
    await fh.close();
  }
}

/** Sort and merge overlapping or touching ranges. */
export function mergeRanges(ranges: Range[]): Range[] {
  const sorted = ranges.filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const out: Range[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else {
      out.push({ offset: r.offset, length: r.length });
    }
  }
  return out;
}

export type ChangesSince =
  | { tracked: true; ranges: Range[] }
  | { tracked: false; reason: string };

/** Union of the ranges written after `since` up to and including `until` (same epoch as the log). */
export async function changesBetween(file: string, since: TrackingPoint, until: TrackingPoint): Promise<ChangesSince> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, 'r');
  } catch (e) {
    return { tracked: false, reason: `change-tracking log ${file} cannot be opened: ${(e as Error).message}` };
  }
  try {
    let epoch: string;
    let size: number;
    try {
      ({ epoch, size } = await readHeader(fh, file));
    } catch (e) {
      return { tracked: false, reason: `change-tracking log damaged: ${(e as Error).message}` };
    }
    if (since.epoch !== epoch) {
      return { tracked: false, reason: `change tracking was reset since ${formatTrackingId(since)} (current epoch ${epoch})` };
    }
    if (until.epoch !== epoch) {
      return { tracked: false, reason: `change tracking was reset since the checkpoint (${formatTrackingId(until)}; current epoch ${epoch})` };
    }
    const count = Math.floor((size - HEADER_SIZE) / RECORD_SIZE);
    if (until.seq > count) {
      return { tracked: false, reason: `checkpoint tracking id ${formatTrackingId(until)} lies beyond the log (${count} records)` };
    }
    if (since.seq > until.seq) {
      return { tracked: false, reason: `tracking id ${formatTrackingId(since)} is newer than the checkpoint's ${formatTrackingId(until)}` };
    }
    const n = until.seq - since.seq;
    if (n > MAX_RECORDS_READ) return { tracked: false, reason: `too many changes to list (${n} records)` };
    const ranges: Range[] = [];
    const chunkRecords = 8192;
    for (let first = since.seq; first < until.seq; first += chunkRecords) {
      const k = Math.min(chunkRecords, until.seq - first);
      const buf = Buffer.alloc(k * RECORD_SIZE);
      await fh.read(buf, 0, buf.length, HEADER_SIZE + first * RECORD_SIZE);
      for (let i = 0; i < k; i++) {
        const r = decode(buf, i * RECORD_SIZE, first + i + 1);
        if (!r) return { tracked: false, reason: `change-tracking log damaged: record ${first + i + 1} is unreadable` };
        ranges.push(r);
      }
      // Merge as we go so a long log does not pile up unmerged ranges.
      if (ranges.length > 100_000) ranges.splice(0, ranges.length, ...mergeRanges(ranges));
    }
    return { tracked: true, ranges: mergeRanges(ranges) };
  } finally {
    await fh.close();
  }
}
