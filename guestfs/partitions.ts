// Partition tables: GPT (UEFI 2.10 §5.3) and MBR (with extended/logical partitions).
//
// MBR, sector 0 (512 bytes):
//   446  4 × 16-byte entries: 0 status, 4 type, 8 first LBA u32 LE, 12 sector count u32 LE
//   510  0x55 0xAA
//   Type 0xEE covering the disk = a protective MBR: the disk is GPT. Types 0x05, 0x0F, 0x85 are
//   extended partitions: a chain of EBRs, each with entry 0 = a logical partition (relative to
//   this EBR) and entry 1 = the next EBR (relative to the extended partition's start).
//   Primaries are numbered 1-4 by slot, logicals 5, 6, ... in chain order (as Linux does).
// GPT header, LBA 1 (a copy in the last LBA):
//   0 "EFI PART", 8 revision, 12 header size (92..sector), 16 CRC-32 of the header with this field
//   zero, 24 this LBA, 32 other copy's LBA, 40 first usable LBA, 48 last usable LBA, 56 disk GUID,
//   72 entries' LBA, 80 entry count u32, 84 entry size u32 (128 × 2^n), 88 CRC-32 of the entries
// GPT entry: 0 type GUID (zero = unused), 16 unique GUID, 32 first LBA, 40 last LBA (inclusive),
//   48 attributes, 56 name (36 UTF-16LE code units). Numbered by slot, from 1.
// A sector is 512 bytes, or 4096 where the GPT header is found there.
import { crc32 } from 'node:zlib';
import { GuestFsError } from './errors';
import { looksLikeFat } from './fat';
import { looksLikeNtfs } from './ntfs';
import type { RandomAccess } from './types';

export interface Partition {
  number: number;
  /** Bytes from the start of the disk. */
  start: number;
  size: number;
  /** GPT type GUID (lowercase, dashed) or MBR type as `0x0c`. */
  type: string;
  /** GPT partition name. */
  name?: string;
}

export interface PartitionTable {
  scheme: 'gpt' | 'mbr' | 'none';
  sectorSize: number;
  partitions: Partition[];
}

/** Limits no real table comes near: bound the work a hostile one can ask for. */
const MAX_GPT_ENTRIES_BYTES = 1024 * 1024;
const MAX_LOGICAL = 128;

export const GPT_TYPES: Record<string, string> = {
  'c12a7328-f81f-11d2-ba4b-00a0c93ec93b': 'EFI system',
  'e3c9e316-0b5c-4db8-817d-f92df00215ae': 'Microsoft reserved',
  'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7': 'Microsoft basic data',
  'de94bba4-06d1-4d40-a16a-bfd50179d6ac': 'Windows recovery',
  '0fc63daf-8483-4772-8e79-3d69d8477de4': 'Linux file system',
  '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f': 'Linux swap',
};

export function guidString(b: Buffer): string {
  const h = b.toString('hex');
  const le = (s: string) => s.match(/../g)!.reverse().join('');
  return `${le(h.slice(0, 8))}-${le(h.slice(8, 12))}-${le(h.slice(12, 16))}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export async function readPartitionTable(disk: RandomAccess, volume: string): Promise<PartitionTable> {
  const fail = (defect: string): never => {
    throw new GuestFsError(volume, '', `partition table: ${defect}`);
  };
  if (disk.size < 512) return { scheme: 'none', sectorSize: 512, partitions: [] };
  const mbr = await disk.read(0, 512);
  // A FAT or NTFS boot sector also ends in 55 AA: that is a volume without a table.
  if (mbr.readUInt16LE(510) !== 0xaa55 || looksLikeFat(mbr) || looksLikeNtfs(mbr)) return { scheme: 'none', sectorSize: 512, partitions: [] };
  const entries = [0, 1, 2, 3].map((i) => {
    const e = mbr.subarray(446 + i * 16, 462 + i * 16);
    return { slot: i + 1, status: e[0], type: e[4], first: e.readUInt32LE(8), count: e.readUInt32LE(12) };
  });
  if (entries.some((e) => e.type === 0xee)) {
    for (const sectorSize of [512, 4096]) {
      if (disk.size < sectorSize * 3) continue;
      const primary = await readGpt(disk, sectorSize, 1, fail);
      if (primary) return primary;
      const backup = await readGpt(disk, sectorSize, Math.floor(disk.size / sectorSize) - 1, fail);
      if (backup) return backup;
    }
    fail('protective MBR but no GPT header with a valid CRC-32 (primary or backup)');
  }
  const sectors = Math.floor(disk.size / 512);
  const parts: Partition[] = [];
  for (const e of entries) {
    if (e.type === 0 || e.count === 0) continue;
    if ((e.status !== 0 && e.status !== 0x80) || e.first === 0) {
      if (parts.length === 0 && e.slot === 1) return { scheme: 'none', sectorSize: 512, partitions: [] };
      fail(`MBR entry ${e.slot}: status 0x${e.status.toString(16)}, first sector ${e.first}: not a partition entry`);
    }
    if (e.first + e.count > sectors) fail(`MBR entry ${e.slot}: sectors ${e.first}+${e.count} past the end of the disk (${sectors} sectors)`);
    if ([0x05, 0x0f, 0x85].includes(e.type)) {
      let ebr = e.first;
      const seen = new Set<number>();
      for (let n = 5; ; n++) {
        if (seen.has(ebr)) fail(`extended partition: EBR chain loops back to sector ${ebr}`);
        if (seen.size >= MAX_LOGICAL) fail(`extended partition: more than ${MAX_LOGICAL} logical partitions`);
        seen.add(ebr);
        const b = await disk.read(ebr * 512, 512);
        if (b.readUInt16LE(510) !== 0xaa55) fail(`extended partition: EBR at sector ${ebr} has no 55 AA signature`);
        const first = ebr + b.readUInt32LE(446 + 8);
        const count = b.readUInt32LE(446 + 12);
        if (count > 0) {
          if (first + count > e.first + e.count) fail(`logical partition ${n}: sectors ${first}+${count} outside its extended partition`);
          parts.push({ number: n, start: first * 512, size: count * 512, type: `0x${b[446 + 4].toString(16).padStart(2, '0')}` });
        }
        const next = b.readUInt32LE(462 + 8);
        if (b[462 + 4] === 0 || next === 0) break;
        ebr = e.first + next;
        if (ebr >= e.first + e.count) fail(`extended partition: next EBR at sector ${ebr} outside it`);
      }
    } else {
      parts.push({ number: e.slot, start: e.first * 512, size: e.count * 512, type: `0x${e.type.toString(16).padStart(2, '0')}` });
    }
  }
  checkOverlaps(parts, fail);
  return { scheme: 'mbr', sectorSize: 512, partitions: parts.sort((a, b) => a.number - b.number) };
}

async function readGpt(disk: RandomAccess, ss: number, lba: number, fail: (d: string) => never): Promise<PartitionTable | undefined> {
  const h = await disk.read(lba * ss, ss);
  if (h.toString('latin1', 0, 8) !== 'EFI PART') return undefined;
  const headerSize = h.readUInt32LE(12);
  if (headerSize < 92 || headerSize > ss) return undefined;
  const copy = Buffer.from(h.subarray(0, headerSize));
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== h.readUInt32LE(16)) return undefined;
  const sectors = Math.floor(disk.size / ss);
  const firstUsable = Number(h.readBigUInt64LE(40));
  const lastUsable = Number(h.readBigUInt64LE(48));
  const entriesLba = Number(h.readBigUInt64LE(72));
  const count = h.readUInt32LE(80);
  const entrySize = h.readUInt32LE(84);
  if (entrySize < 128 || entrySize % 128 !== 0 || (entrySize & (entrySize - 1)) !== 0) fail(`GPT entry size ${entrySize} is not 128 × 2^n`);
  if (count * entrySize > MAX_GPT_ENTRIES_BYTES) fail(`GPT claims ${count} entries of ${entrySize} bytes (more than ${MAX_GPT_ENTRIES_BYTES} bytes)`);
  if (lastUsable >= sectors || firstUsable > lastUsable) fail(`GPT usable sectors ${firstUsable}..${lastUsable} outside the disk of ${sectors} sectors`);
  if (entriesLba < 1 || entriesLba * ss + count * entrySize > disk.size) fail(`GPT entries at LBA ${entriesLba} past the end of the disk`);
  const table = await disk.read(entriesLba * ss, count * entrySize);
  if (crc32(table) !== h.readUInt32LE(88)) fail(`GPT entries at LBA ${entriesLba} fail their CRC-32`);
  const parts: Partition[] = [];
  for (let i = 0; i < count; i++) {
    const e = table.subarray(i * entrySize, i * entrySize + 128);
    if (e.subarray(0, 16).every((x) => x === 0)) continue;
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    if (first < firstUsable || last > lastUsable || last < first) fail(`GPT entry ${i + 1}: sectors ${first}..${last} outside the usable ${firstUsable}..${lastUsable}`);
    const name = e.toString('utf16le', 56, 128).replace(/\0.*$/s, '');
    parts.push({ number: i + 1, start: first * ss, size: (last - first + 1) * ss, type: guidString(e.subarray(0, 16)), name });
  }
  checkOverlaps(parts, fail);
  return { scheme: 'gpt', sectorSize: ss, partitions: parts };
}

function checkOverlaps(parts: Partition[], fail: (d: string) => never): void {
  const s = [...parts].sort((a, b) => a.start - b.start);
  for (let i = 1; i < s.length; i++) {
    if (s[i].start < s[i - 1].start + s[i - 1].size) fail(`partitions ${s[i - 1].number} and ${s[i].number} overlap`);
  }
}
