import { checksumWithField, crc32c } from './crc32c';
import { readGuid, writeGuid } from './guid';
import { VhdxFile } from './file';

// File layout: the first 1 MiB is the header section.
//   0        File Type Identifier (64 KiB): "vhdxfile" (8), Creator (UTF-16LE, 512 bytes)
//   64 KiB   Header 1 (4 KiB used of 64 KiB)
//   128 KiB  Header 2
//   192 KiB  Region Table 1 (64 KiB), 256 KiB Region Table 2 — see region-table.ts
//
// Header (4 KiB, little endian), CRC-32C over the 4 KiB with the checksum field as zero:
//   0  Signature "head"        u32
//   4  Checksum                u32
//   8  SequenceNumber          u64   the valid header with the larger one is current
//   16 FileWriteGuid           GUID  changed before the first write to the file in a session
//   32 DataWriteGuid           GUID  changed before the first write of user-visible data; a child's
//                                    parent_linkage names its parent's DataWriteGuid
//   48 LogGuid                 GUID  zero = no log to replay; log entries must carry this GUID
//   64 LogVersion              u16   0
//   66 Version                 u16   1
//   68 LogLength               u32   multiple of 1 MiB
//   72 LogOffset               u64   multiple of 1 MiB
// Writers update the two copies alternately so one valid header survives a torn write.

export const FILE_IDENTIFIER_SIGNATURE = 'vhdxfile';
export const HEADER_OFFSETS = [64 * 1024, 128 * 1024] as const;
export const HEADER_SIZE = 4096;
const HEADER_SIGNATURE = 'head';

export interface VhdxHeader {
  sequenceNumber: bigint;
  fileWriteGuid: string;
  dataWriteGuid: string;
  logGuid: string;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: number;
  /** Which copy (0 or 1) was current when read. */
  slot: 0 | 1;
}

export function encodeFileIdentifier(creator: string): Buffer {
  const buf = Buffer.alloc(64 * 1024);
  buf.write(FILE_IDENTIFIER_SIGNATURE, 0, 'latin1');
  buf.write(creator.slice(0, 255), 8, 'utf16le');
  return buf;
}

export function encodeHeader(h: Omit<VhdxHeader, 'slot'>): Buffer {
  const buf = Buffer.alloc(HEADER_SIZE);
  buf.write(HEADER_SIGNATURE, 0, 'latin1');
  buf.writeBigUInt64LE(h.sequenceNumber, 8);
  writeGuid(buf, 16, h.fileWriteGuid);
  writeGuid(buf, 32, h.dataWriteGuid);
  writeGuid(buf, 48, h.logGuid);
  buf.writeUInt16LE(h.logVersion, 64);
  buf.writeUInt16LE(h.version, 66);
  buf.writeUInt32LE(h.logLength, 68);
  buf.writeBigUInt64LE(BigInt(h.logOffset), 72);
  buf.writeUInt32LE(crc32c(buf), 4);
  return buf;
}

/** Why a header copy is unusable, or the parsed header. */
function decodeHeader(buf: Buffer, slot: 0 | 1): VhdxHeader | string {
  if (buf.toString('latin1', 0, 4) !== HEADER_SIGNATURE) return 'bad signature';
  const stored = buf.readUInt32LE(4);
  if (checksumWithField(buf, 4) !== stored) return 'bad CRC-32C checksum';
  const version = buf.readUInt16LE(66);
  if (version !== 1) return `unsupported version ${version}`;
  return {
    sequenceNumber: buf.readBigUInt64LE(8),
    fileWriteGuid: readGuid(buf, 16),
    dataWriteGuid: readGuid(buf, 32),
    logGuid: readGuid(buf, 48),
    logVersion: buf.readUInt16LE(64),
    version,
    logLength: buf.readUInt32LE(68),
    logOffset: Number(buf.readBigUInt64LE(72)),
    slot,
  };
}

/** Check the file type identifier and return the current header (valid CRC, larger sequence number). */
export async function readCurrentHeader(file: VhdxFile): Promise<VhdxHeader> {
  if (file.size < 1024 * 1024) file.fail(`truncated: ${file.size} bytes is smaller than the 1 MiB header section`);
  const ident = await file.readStruct(0, 8, 'file type identifier');
  if (ident.toString('latin1') !== FILE_IDENTIFIER_SIGNATURE) file.fail('not a VHDX file: bad file type identifier signature');
  const found: VhdxHeader[] = [];
  const problems: string[] = [];
  for (const slot of [0, 1] as const) {
    const r = decodeHeader(await file.readStruct(HEADER_OFFSETS[slot], HEADER_SIZE, `header ${slot + 1}`), slot);
    if (typeof r === 'string') problems.push(`header ${slot + 1}: ${r}`);
    else found.push(r);
  }
  if (found.length === 0) file.fail(`no valid header (${problems.join('; ')})`);
  found.sort((a, b) => (a.sequenceNumber > b.sequenceNumber ? -1 : a.sequenceNumber < b.sequenceNumber ? 1 : 0));
  const h = found[0]!;
  if (h.logVersion !== 0) file.fail(`unsupported log version ${h.logVersion}`);
  if (h.logOffset % (1024 * 1024) !== 0 || h.logLength % (1024 * 1024) !== 0 || h.logOffset < 1024 * 1024) {
    file.fail(`log location ${h.logOffset}+${h.logLength} is not 1 MiB aligned`);
  }
  return h;
}

/**
 * Make `next` the current header: write it to the other copy with sequence+1, fsync, then to the
 * first copy with sequence+2, fsync — at every instant one copy is valid and at least as new.
 */
export async function writeHeaders(file: VhdxFile, current: VhdxHeader, next: Omit<VhdxHeader, 'slot' | 'sequenceNumber'>): Promise<VhdxHeader> {
  const other = current.slot === 0 ? 1 : 0;
  const first = { ...next, sequenceNumber: current.sequenceNumber + 1n };
  await file.write(HEADER_OFFSETS[other], encodeHeader(first));
  await file.sync();
  const second = { ...next, sequenceNumber: current.sequenceNumber + 2n };
  await file.write(HEADER_OFFSETS[current.slot], encodeHeader(second));
  await file.sync();
  return { ...second, slot: current.slot };
}
