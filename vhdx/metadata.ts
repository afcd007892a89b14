import { readGuid, writeGuid } from './guid';
import { VhdxFile } from './file';
import { Region } from './region-table';
import { decodeParentLocator, ParentLocator } from './parent-locator';

// Metadata region: a 64 KiB table at its start, then the items it points at.
// Table header (32 bytes):
//   0  Signature "metadata"  8 bytes
//   8  Reserved              u16
//   10 EntryCount            u16   at most 2047
//   12 Reserved2             20 bytes
// Entry (32 bytes):
//   0  ItemId    GUID
//   16 Offset    u32   from the start of the region, >= 64 KiB (0 when Length is 0)
//   20 Length    u32
//   24 Flags     u32   bit 0 IsUser, bit 1 IsVirtualDisk, bit 2 IsRequired
//   28 Reserved  u32
// System items:
//   File Parameters     BlockSize u32 (1..256 MiB, power of two); u32 bit 0 LeaveBlocksAllocated (fixed),
//                       bit 1 HasParent (differencing)
//   Virtual Disk Size   u64, a multiple of the logical sector size, at most 64 TiB
//   Virtual Disk ID     GUID (SCSI page 83 identity)
//   Logical Sector Size u32, 512 or 4096
//   Physical Sector Size u32, 512 or 4096
//   Parent Locator      see parent-locator.ts; only in differencing disks

export const METADATA_TABLE_SIZE = 64 * 1024;
export const ITEM = {
  fileParameters: 'caa16737-fa36-4d43-b3b6-33f0aa44e76b',
  virtualDiskSize: '2fa54224-cd1b-4876-b211-5dbed83bf4b8',
  virtualDiskId: 'beca12ab-b2e6-4523-93ef-c309e000c746',
  logicalSectorSize: '8141bf1d-a96f-4709-ba47-f233a8faab5f',
  physicalSectorSize: 'cda348c7-445d-4471-9cc9-e9885251c556',
  parentLocator: 'a8d35f2d-b30b-454d-abf7-d3d84834ab0c',
} as const;
export const FLAG_IS_USER = 1;
export const FLAG_IS_VIRTUAL_DISK = 2;
export const FLAG_IS_REQUIRED = 4;
export const MAX_VIRTUAL_SIZE = 64 * 1024 ** 4;
const MIB = 1024 * 1024;

export interface DiskMetadata {
  blockSize: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualSize: number;
  virtualDiskId: string;
  logicalSectorSize: 512 | 4096;
  physicalSectorSize: 512 | 4096;
  parentLocator?: ParentLocator;
}

export interface MetadataItem {
  id: string;
  flags: number;
  data: Buffer;
}

/** Lay out a metadata region: the table, then each item at a 4 KiB boundary from 64 KiB on. */
export function encodeMetadataRegion(items: MetadataItem[], regionLength: number): Buffer {
  const buf = Buffer.alloc(regionLength);
  buf.write('metadata', 0, 'latin1');
  buf.writeUInt16LE(items.length, 10);
  let at = METADATA_TABLE_SIZE;
  items.forEach((item, i) => {
    const e = 32 + i * 32;
    writeGuid(buf, e, item.id);
    buf.writeUInt32LE(at, e + 16);
    buf.writeUInt32LE(item.data.length, e + 20);
    buf.writeUInt32LE(item.flags, e + 24);
    item.data.copy(buf, at);
    at += Math.ceil(item.data.length / 4096) * 4096 || 4096;
  });
  if (at > regionLength) throw new Error('metadata items do not fit the metadata region');
  return buf;
}

export function standardItems(m: Omit<DiskMetadata, 'parentLocator'>, parentLocator?: Buffer): MetadataItem[] {
  const fp = Buffer.alloc(8);
  fp.writeUInt32LE(m.blockSize, 0);
  fp.writeUInt32LE((m.leaveBlocksAllocated ? 1 : 0) | (m.hasParent ? 2 : 0), 4);
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(m.virtualSize));
  const id = Buffer.alloc(16);
  writeGuid(id, 0, m.virtualDiskId);
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    return b;
  };
  const items: MetadataItem[] = [
    { id: ITEM.fileParameters, flags: FLAG_IS_REQUIRED, data: fp },
    { id: ITEM.virtualDiskSize, flags: FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK, data: size },
    { id: ITEM.virtualDiskId, flags: FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK, data: id },
    { id: ITEM.logicalSectorSize, flags: FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK, data: u32(m.logicalSectorSize) },
    { id: ITEM.physicalSectorSize, flags: FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK, data: u32(m.physicalSectorSize) },
  ];
  if (parentLocator) items.push({ id: ITEM.parentLocator, flags: FLAG_IS_REQUIRED, data: parentLocator });
  return items;
}

export async function readMetadata(file: VhdxFile, region: Region): Promise<DiskMetadata> {
  const table = await file.readStruct(region.fileOffset, METADATA_TABLE_SIZE, 'metadata table');
  if (table.toString('latin1', 0, 8) !== 'metadata') file.fail('metadata table has a bad signature');
  const count = table.readUInt16LE(10);
  if (count > 2047) file.fail(`metadata table entry count ${count} exceeds 2047`);
  const items = new Map<string, Buffer>();
  for (let i = 0; i < count; i++) {
    const e = 32 + i * 32;
    const id = readGuid(table, e);
    const offset = table.readUInt32LE(e + 16);
    const length = table.readUInt32LE(e + 20);
    const flags = table.readUInt32LE(e + 24);
    const known = (Object.values(ITEM) as string[]).includes(id);
    if (!known) {
      if (flags & FLAG_IS_REQUIRED) file.fail(`unknown required metadata item ${id}`);
      continue;
    }
    if (items.has(id)) file.fail(`metadata item ${id} appears twice`);
    if (length > MIB || (length > 0 && (offset < METADATA_TABLE_SIZE || offset + length > region.length))) {
      file.fail(`metadata item ${id} at ${offset}+${length} lies outside the metadata region`);
    }
    items.set(id, await file.readStruct(region.fileOffset + offset, length, `metadata item ${id}`));
  }
  const need = (id: string, name: string, size: number): Buffer => {
    const b = items.get(id);
    if (!b) file.fail(`metadata has no ${name} item`);
    if (b.length < size) file.fail(`metadata item ${name} is ${b.length} bytes, expected ${size}`);
    return b;
  };
  const fp = need(ITEM.fileParameters, 'File Parameters', 8);
  const blockSize = fp.readUInt32LE(0);
  if (blockSize < MIB || blockSize > 256 * MIB || (blockSize & (blockSize - 1)) !== 0) {
    file.fail(`block size ${blockSize} is not a power of two between 1 MiB and 256 MiB`);
  }
  const logical = need(ITEM.logicalSectorSize, 'Logical Sector Size', 4).readUInt32LE(0);
  const physical = need(ITEM.physicalSectorSize, 'Physical Sector Size', 4).readUInt32LE(0);
  if (logical !== 512 && logical !== 4096) file.fail(`logical sector size ${logical} is neither 512 nor 4096`);
  if (physical !== 512 && physical !== 4096) file.fail(`physical sector size ${physical} is neither 512 nor 4096`);
  const sizeBig = need(ITEM.virtualDiskSize, 'Virtual Disk Size', 8).readBigUInt64LE(0);
  if (sizeBig === 0n || sizeBig > BigInt(MAX_VIRTUAL_SIZE)) file.fail(`virtual disk size ${sizeBig} is outside 1 byte .. 64 TiB`);
  const virtualSize = Number(sizeBig);
  if (virtualSize % logical !== 0) file.fail(`virtual disk size ${virtualSize} is not a multiple of the logical sector size ${logical}`);
  const virtualDiskId = readGuid(need(ITEM.virtualDiskId, 'Virtual Disk ID', 16), 0);
  const flags = fp.readUInt32LE(4);
  const hasParent = (flags & 2) !== 0;
  const m: DiskMetadata = {
    blockSize,
    leaveBlocksAllocated: (flags & 1) !== 0,
    hasParent,
    virtualSize,
    virtualDiskId,
    logicalSectorSize: logical,
    physicalSectorSize: physical,
  };
  if (hasParent) {
    const pl = items.get(ITEM.parentLocator);
    if (!pl) file.fail('differencing disk has no parent locator');
    m.parentLocator = decodeParentLocator(file, pl);
  }
  return m;
}

/** Where the table entry and data of an item sit, so a writer can rewrite an item through the log. */
export async function locateItem(file: VhdxFile, region: Region, id: string): Promise<{ entryOffset: number; offset: number; length: number } | undefined> {
  const table = await file.readStruct(region.fileOffset, METADATA_TABLE_SIZE, 'metadata table');
  const count = Math.min(table.readUInt16LE(10), 2047);
  for (let i = 0; i < count; i++) {
    const e = 32 + i * 32;
    if (readGuid(table, e) === id) return { entryOffset: e, offset: table.readUInt32LE(e + 16), length: table.readUInt32LE(e + 20) };
  }
  return undefined;
}
