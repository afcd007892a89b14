import { checksumWithField, crc32c } from './crc32c';
import { readGuid, writeGuid } from './guid';
import { VhdxFile } from './file';

// Region Table (64 KiB at 192 KiB, identical copy at 256 KiB), CRC-32C over all 64 KiB:
//   0  Signature "regi"  u32
//   4  Checksum          u32
//   8  EntryCount        u32   at most 2047
//   12 Reserved          u32
//   16 entries of 32 bytes:
//      0  Guid        GUID  which region
//      16 FileOffset  u64   1 MiB aligned
//      24 Length      u32   multiple of 1 MiB
//      28 Required    u32   bit 0: a parser that does not know this region must refuse the file
// Known regions: the BAT and the metadata region.

export const REGION_TABLE_OFFSETS = [192 * 1024, 256 * 1024] as const;
export const REGION_TABLE_SIZE = 64 * 1024;
export const BAT_REGION_GUID = '2dc27766-f623-4200-9d64-115e9bfd4a08';
export const METADATA_REGION_GUID = '8b7ca206-4790-4b9a-b8fe-575f050f886e';
const MIB = 1024 * 1024;

export interface Region {
  guid: string;
  fileOffset: number;
  length: number;
  required: boolean;
}

export interface RegionTable {
  bat: Region;
  metadata: Region;
}

export function encodeRegionTable(regions: Region[]): Buffer {
  const buf = Buffer.alloc(REGION_TABLE_SIZE);
  buf.write('regi', 0, 'latin1');
  buf.writeUInt32LE(regions.length, 8);
  regions.forEach((r, i) => {
    const at = 16 + i * 32;
    writeGuid(buf, at, r.guid);
    buf.writeBigUInt64LE(BigInt(r.fileOffset), at + 16);
    buf.writeUInt32LE(r.length, at + 24);
    buf.writeUInt32LE(r.required ? 1 : 0, at + 28);
  });
  buf.writeUInt32LE(crc32c(buf), 4);
  return buf;
}

function decode(buf: Buffer): Region[] | string {
  if (buf.toString('latin1', 0, 4) !== 'regi') return 'bad signature';
  if (checksumWithField(buf, 4) !== buf.readUInt32LE(4)) return 'bad CRC-32C checksum';
  const count = buf.readUInt32LE(8);
  if (count > 2047) return `entry count ${count} exceeds 2047`;
  const out: Region[] = [];
  for (let i = 0; i < count; i++) {
    const at = 16 + i * 32;
    out.push({
      guid: readGuid(buf, at),
      fileOffset: Number(buf.readBigUInt64LE(at + 16)),
      length: buf.readUInt32LE(at + 24),
      required: (buf.readUInt32LE(at + 28) & 1) === 1,
    });
  }
  return out;
}

export async function readRegionTable(file: VhdxFile): Promise<RegionTable> {
  const problems: string[] = [];
  let regions: Region[] | undefined;
  for (const copy of [0, 1] as const) {
    const r = decode(await file.readStruct(REGION_TABLE_OFFSETS[copy], REGION_TABLE_SIZE, `region table ${copy + 1}`));
    if (typeof r === 'string') problems.push(`region table ${copy + 1}: ${r}`);
    else {
      regions = r;
      break;
    }
  }
  if (!regions) file.fail(`no valid region table (${problems.join('; ')})`);
  let bat: Region | undefined;
  let metadata: Region | undefined;
  for (const r of regions) {
    if (r.guid === BAT_REGION_GUID) bat = r;
    else if (r.guid === METADATA_REGION_GUID) metadata = r;
    else if (r.required) file.fail(`unknown required region ${r.guid}`);
  }
  if (!bat) file.fail('region table has no BAT region');
  if (!metadata) file.fail('region table has no metadata region');
  for (const [name, r] of [['BAT', bat], ['metadata', metadata]] as const) {
    if (r.fileOffset < MIB || r.fileOffset % MIB !== 0 || r.length === 0 || r.length % MIB !== 0) {
      file.fail(`${name} region ${r.fileOffset}+${r.length} is not a whole number of MiB past the header section`);
    }
    if (r.fileOffset + r.length > file.logicalSize) {
      file.fail(`truncated: ${name} region ${r.fileOffset}+${r.length} lies beyond the end of the file (${file.logicalSize} bytes)`);
    }
  }
  if (bat.fileOffset < metadata.fileOffset + metadata.length && metadata.fileOffset < bat.fileOffset + bat.length) {
    file.fail('BAT and metadata regions overlap');
  }
  return { bat, metadata };
}
