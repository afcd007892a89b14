import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { VhdxError } from './errors';
import { encodeFileIdentifier, encodeHeader, HEADER_OFFSETS } from './header';
import { BAT_REGION_GUID, encodeRegionTable, METADATA_REGION_GUID, REGION_TABLE_OFFSETS } from './region-table';
import { DiskMetadata, encodeMetadataRegion, MAX_VIRTUAL_SIZE, standardItems } from './metadata';
import { batGeometry, PAYLOAD, SB_PRESENT, SECTOR_BITMAP_BLOCK } from './bat';
import { encodeParentLocator, locatorEntriesFor } from './parent-locator';
import { newGuid, ZERO_GUID } from './guid';
import { Disk } from './disk';

// Layout of a file we create (as Hyper-V and qemu do it):
//   0 MiB  header section (identifier, 2 headers, 2 region tables)
//   1 MiB  log, 1 MiB
//   2 MiB  metadata region, 1 MiB
//   3 MiB  BAT, rounded up to whole MiB
//   then payload blocks and sector bitmaps, each at a 1 MiB boundary, appended as written.

const MIB = 1024 * 1024;
const LOG_OFFSET = 1 * MIB;
const LOG_LENGTH = 1 * MIB;
const METADATA_OFFSET = 2 * MIB;
const METADATA_LENGTH = 1 * MIB;
const BAT_OFFSET = 3 * MIB;
const CREATOR = 'hvprotect';

export interface DynamicOptions {
  virtualSize: number;
  /** Default 32 MiB, as Hyper-V uses for dynamic disks. */
  blockSize?: number;
  logicalSectorSize?: 512 | 4096;
  physicalSectorSize?: 512 | 4096;
}

function checkOptions(file: string, o: DynamicOptions): Required<DynamicOptions> {
  // Keys present but undefined take the default too.
  const given = Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<DynamicOptions>;
  const r = { blockSize: 32 * MIB, logicalSectorSize: 512 as const, physicalSectorSize: 4096 as const, virtualSize: o.virtualSize, ...given };
  const { virtualSize, blockSize, logicalSectorSize, physicalSectorSize } = r;
  if (logicalSectorSize !== 512 && logicalSectorSize !== 4096) throw new VhdxError(file, `logical sector size ${logicalSectorSize} is neither 512 nor 4096`);
  if (physicalSectorSize !== 512 && physicalSectorSize !== 4096) throw new VhdxError(file, `physical sector size ${physicalSectorSize} is neither 512 nor 4096`);
  if (!Number.isSafeInteger(virtualSize) || virtualSize <= 0 || virtualSize > MAX_VIRTUAL_SIZE || virtualSize % logicalSectorSize !== 0) {
    throw new VhdxError(file, `virtual size ${virtualSize} must be a positive multiple of ${logicalSectorSize} up to 64 TiB`);
  }
  if (blockSize < MIB || blockSize > 256 * MIB || (blockSize & (blockSize - 1)) !== 0) {
    throw new VhdxError(file, `block size ${blockSize} is not a power of two between 1 MiB and 256 MiB`);
  }
  return r;
}

interface Layout {
  meta: Omit<DiskMetadata, 'parentLocator'>;
  parentLocator?: Buffer;
  dataWriteGuid?: string;
}

/** The header section, log, metadata and an empty BAT; returns where payload may start. */
async function writeSkeleton(fh: fsp.FileHandle, l: Layout): Promise<{ batLength: number; dataStart: number }> {
  const g = batGeometry(l.meta);
  const batLength = Math.ceil((g.totalEntries * 8) / MIB) * MIB;
  const header = {
    fileWriteGuid: newGuid(),
    dataWriteGuid: l.dataWriteGuid ?? newGuid(),
    logGuid: ZERO_GUID,
    logVersion: 0,
    version: 1,
    logLength: LOG_LENGTH,
    logOffset: LOG_OFFSET,
  };
  const regions = encodeRegionTable([
    { guid: BAT_REGION_GUID, fileOffset: BAT_OFFSET, length: batLength, required: true },
    { guid: METADATA_REGION_GUID, fileOffset: METADATA_OFFSET, length: METADATA_LENGTH, required: true },
  ]);
  const dataStart = BAT_OFFSET + batLength;
  await fh.truncate(dataStart);
  await fh.write(encodeFileIdentifier(CREATOR), 0, undefined, 0);
  await fh.write(encodeHeader({ ...header, sequenceNumber: 1n }), 0, undefined, HEADER_OFFSETS[0]);
  await fh.write(encodeHeader({ ...header, sequenceNumber: 2n }), 0, undefined, HEADER_OFFSETS[1]);
  await fh.write(regions, 0, undefined, REGION_TABLE_OFFSETS[0]);
  await fh.write(regions, 0, undefined, REGION_TABLE_OFFSETS[1]);
  await fh.write(encodeMetadataRegion(standardItems(l.meta, l.parentLocator), METADATA_LENGTH), 0, undefined, METADATA_OFFSET);
  return { batLength, dataStart };
}

/** Build a new file under a temporary name and rename it into place, so a crash never leaves half a disk. */
async function createAtomically(file: string, build: (fh: fsp.FileHandle) => Promise<void>): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  const fh = await fsp.open(tmp, 'wx');
  try {
    await build(fh);
    await fh.sync();
    await fh.close();
    await fsp.rename(tmp, file);
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    throw e;
  }
  const dir = await fsp.open(path.dirname(file), 'r');
  await dir.sync().catch(() => undefined);
  await dir.close();
}

export async function createDynamicVhdx(file: string, o: DynamicOptions): Promise<void> {
  const r = checkOptions(file, o);
  await createAtomically(file, async (fh) => {
    await writeSkeleton(fh, {
      meta: { ...r, leaveBlocksAllocated: false, hasParent: false, virtualDiskId: newGuid() },
    });
  });
}

/**
 * A fixed disk: every block FULLY_PRESENT at its place in the file, LeaveBlocksAllocated set. The
 * payload is a sparse extension of the file on Linux; it reads as zeros.
 */
export async function createFixedVhdx(file: string, o: DynamicOptions): Promise<void> {
  const r = checkOptions(file, o);
  const meta = { ...r, leaveBlocksAllocated: true, hasParent: false, virtualDiskId: newGuid() };
  const g = batGeometry(meta);
  await createAtomically(file, async (fh) => {
    const { dataStart } = await writeSkeleton(fh, { meta });
    const bat = Buffer.alloc(g.totalEntries * 8);
    for (let block = 0; block < g.payloadBlocks; block++) {
      const index = block + Math.floor(block / g.chunkRatio);
      const mb = (dataStart + block * r.blockSize) / MIB;
      bat.writeUInt32LE((((mb % 4096) << 20) | PAYLOAD.FULLY_PRESENT) >>> 0, index * 8);
      bat.writeUInt32LE(Math.floor(mb / 4096), index * 8 + 4);
    }
    await fh.write(bat, 0, bat.length, BAT_OFFSET);
    await fh.truncate(dataStart + g.payloadBlocks * r.blockSize);
  });
}

/**
 * An AVHDX child of `parentPath`: same size, sector sizes and disk identity, 2 MiB blocks (as
 * Hyper-V makes checkpoints), a parent locator with the parent's DataWriteGuid and its path
 * relative to the child and absolute.
 */
export async function createDifferencingVhdx(file: string, parentPath: string, o: { blockSize?: number } = {}): Promise<void> {
  const parent = await Disk.open(parentPath, { replayLog: true }, []);
  try {
    const meta = {
      blockSize: o.blockSize ?? 2 * MIB,
      leaveBlocksAllocated: false,
      hasParent: true,
      virtualSize: parent.virtualSize,
      virtualDiskId: parent.virtualDiskId,
      logicalSectorSize: parent.logicalSectorSize,
      physicalSectorSize: parent.physicalSectorSize,
    };
    checkOptions(file, meta);
    const locator = encodeParentLocator(locatorEntriesFor(file, parentPath, parent.dataWriteGuid));
    const g = batGeometry(meta);
    await createAtomically(file, async (fh) => {
      const { dataStart } = await writeSkeleton(fh, { meta, parentLocator: locator });
      // Every sector bitmap is allocated up front, all zero (a sparse extension here): libvhdi reads
      // the bitmap of any block that is not fully present without looking at the bitmap's BAT state.
      const bat = Buffer.alloc(g.totalEntries * 8);
      for (let chunk = 0; chunk < g.sectorBitmapBlocks; chunk++) {
        const index = chunk * (g.chunkRatio + 1) + g.chunkRatio;
        const mb = dataStart / MIB + chunk;
        bat.writeUInt32LE((((mb % 4096) << 20) | SB_PRESENT) >>> 0, index * 8);
        bat.writeUInt32LE(Math.floor(mb / 4096), index * 8 + 4);
      }
      await fh.write(bat, 0, bat.length, BAT_OFFSET);
      await fh.truncate(dataStart + g.sectorBitmapBlocks * SECTOR_BITMAP_BLOCK);
    });
  } finally {
    await parent.close();
  }
}

/**
 * Export a raw image (a stream of exactly `virtualSize` bytes, shorter means zeros follow) as a
 * new dynamic VHDX: all-zero blocks stay unallocated, the others are appended in order, the BAT is
 * written last and the file renamed into place.
 */
export async function writeRawAsDynamicVhdx(raw: AsyncIterable<Uint8Array>, file: string, o: DynamicOptions): Promise<void> {
  const r = checkOptions(file, o);
  const meta = { ...r, leaveBlocksAllocated: false, hasParent: false, virtualDiskId: newGuid() };
  const g = batGeometry(meta);
  await createAtomically(file, async (fh) => {
    const { dataStart } = await writeSkeleton(fh, { meta });
    const bat = Buffer.alloc(g.totalEntries * 8);
    let next = dataStart;
    let block = 0;
    let fill = 0;
    const buf = Buffer.alloc(r.blockSize);
    const emit = async () => {
      const used = Math.min(r.blockSize, r.virtualSize - block * r.blockSize);
      buf.fill(0, fill, r.blockSize);
      if (!isZero(buf.subarray(0, used))) {
        await fh.write(buf, 0, used, next);
        const index = block + Math.floor(block / g.chunkRatio);
        const mb = next / MIB;
        bat.writeUInt32LE((((mb % 4096) << 20) | PAYLOAD.FULLY_PRESENT) >>> 0, index * 8);
        bat.writeUInt32LE(Math.floor(mb / 4096), index * 8 + 4);
        next += Math.ceil(used / MIB) * MIB;
      }
      block++;
      fill = 0;
    };
    let total = 0;
    for await (const piece of raw) {
      let p = Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
      total += p.length;
      if (total > r.virtualSize) throw new VhdxError(file, `raw image is longer than the virtual size ${r.virtualSize}`);
      while (p.length > 0) {
        const n = Math.min(p.length, r.blockSize - fill);
        p.copy(buf, fill, 0, n);
        fill += n;
        p = p.subarray(n);
        if (fill === r.blockSize || block * r.blockSize + fill === r.virtualSize) await emit();
      }
    }
    if (fill > 0) await emit();
    await fh.truncate(Math.max(next, dataStart));
    await fh.write(bat, 0, bat.length, BAT_OFFSET);
  });
}

const ZERO_MIB = Buffer.alloc(MIB);

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i += MIB) {
    const part = b.subarray(i, Math.min(i + MIB, b.length));
    if (!part.equals(ZERO_MIB.subarray(0, part.length))) return false;
  }
  return true;
}
