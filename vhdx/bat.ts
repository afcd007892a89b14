import { VhdxFile } from './file';
import { DiskMetadata } from './metadata';
import { Region } from './region-table';

// Block Allocation Table: an array of u64 entries, little endian.
//   bits 0-2   State
//   bits 3-19  reserved
//   bits 20-63 FileOffsetMB: where the block sits in the file, in MiB
// Payload blocks (blockSize bytes of the virtual disk each) and sector bitmap blocks (1 MiB each,
// differencing disks only) are interleaved: after every `chunkRatio` payload entries comes one
// sector bitmap entry, chunkRatio = 2^23 * logicalSectorSize / blockSize (the number of payload
// blocks whose sectors one 1 MiB bitmap describes).
//   payload block i      -> entry i + floor(i / chunkRatio)
//   sector bitmap of chunk c -> entry c * (chunkRatio + 1) + chunkRatio

export const PAYLOAD = {
  NOT_PRESENT: 0,
  UNDEFINED: 1,
  ZERO: 2,
  UNMAPPED: 3,
  FULLY_PRESENT: 6,
  PARTIALLY_PRESENT: 7,
} as const;
export const SB_NOT_PRESENT = 0;
export const SB_PRESENT = 6;
export const SECTOR_BITMAP_BLOCK = 1024 * 1024;
const MIB = 1024 * 1024;

export interface BatGeometry {
  chunkRatio: number;
  payloadBlocks: number;
  sectorBitmapBlocks: number;
  totalEntries: number;
}

export function batGeometry(m: Pick<DiskMetadata, 'blockSize' | 'virtualSize' | 'logicalSectorSize' | 'hasParent'>): BatGeometry {
  const chunkRatio = (2 ** 23 * m.logicalSectorSize) / m.blockSize;
  const payloadBlocks = Math.ceil(m.virtualSize / m.blockSize);
  const sectorBitmapBlocks = Math.ceil(payloadBlocks / chunkRatio);
  const totalEntries = m.hasParent
    ? sectorBitmapBlocks * (chunkRatio + 1)
    : payloadBlocks + Math.floor((payloadBlocks - 1) / chunkRatio);
  return { chunkRatio, payloadBlocks, sectorBitmapBlocks, totalEntries };
}

export class Bat {
  constructor(
    readonly entries: Buffer,
    readonly geometry: BatGeometry,
    readonly region: Region,
  ) {}

  static async read(file: VhdxFile, region: Region, m: DiskMetadata): Promise<Bat> {
    const g = batGeometry(m);
    if (g.totalEntries * 8 > region.length) {
      file.fail(`BAT region holds ${region.length / 8} entries but a ${m.virtualSize}-byte disk with ${m.blockSize}-byte blocks needs ${g.totalEntries}`);
    }
    const bat = new Bat(await file.readStruct(region.fileOffset, g.totalEntries * 8, 'BAT'), g, region);
    bat.validate(file, m);
    return bat;
  }

  payloadIndex(block: number): number {
    return block + Math.floor(block / this.geometry.chunkRatio);
  }

  bitmapIndex(chunk: number): number {
    return chunk * (this.geometry.chunkRatio + 1) + this.geometry.chunkRatio;
  }

  state(index: number): number {
    return this.entries[index * 8]! & 7;
  }

  /** File offset in bytes (FileOffsetMB * 1 MiB). */
  offset(index: number): number {
    const lo = this.entries.readUInt32LE(index * 8);
    const hi = this.entries.readUInt32LE(index * 8 + 4);
    return ((lo >>> 20) + hi * 4096) * MIB;
  }

  set(index: number, state: number, fileOffset: number): void {
    const mb = fileOffset / MIB;
    const lo = ((mb % 4096) << 20) | state;
    this.entries.writeUInt32LE(lo >>> 0, index * 8);
    this.entries.writeUInt32LE(Math.floor(mb / 4096), index * 8 + 4);
  }

  /** File offset of the 4 KiB BAT sector holding entry `index`, and that sector's current bytes. */
  sectorOf(index: number): { fileOffset: number; data: Buffer } {
    const byte = Math.floor((index * 8) / 4096) * 4096;
    const data = Buffer.alloc(4096);
    this.entries.copy(data, 0, byte, Math.min(byte + 4096, this.entries.length));
    return { fileOffset: this.region.fileOffset + byte, data };
  }

  /** Every allocated block must lie inside the file, past the header section, in a state the disk type allows. */
  private validate(file: VhdxFile, m: DiskMetadata): void {
    const g = this.geometry;
    for (let block = 0; block < g.payloadBlocks; block++) {
      const i = this.payloadIndex(block);
      const s = this.state(i);
      if (s === PAYLOAD.FULLY_PRESENT || s === PAYLOAD.PARTIALLY_PRESENT) {
        if (s === PAYLOAD.PARTIALLY_PRESENT && !m.hasParent) file.fail(`BAT entry ${i}: block ${block} is PARTIALLY_PRESENT in a disk without a parent`);
        const off = this.offset(i);
        const inUse = Math.min(m.blockSize, m.virtualSize - block * m.blockSize);
        if (off < MIB || off + inUse > file.logicalSize) {
          file.fail(`BAT entry ${i}: payload block ${block} at file offset ${off} lies outside the file (${file.logicalSize} bytes)`);
        }
      } else if (s !== PAYLOAD.NOT_PRESENT && s !== PAYLOAD.UNDEFINED && s !== PAYLOAD.ZERO && s !== PAYLOAD.UNMAPPED) {
        file.fail(`BAT entry ${i}: payload block ${block} has invalid state ${s}`);
      }
    }
    if (!m.hasParent) return;
    for (let chunk = 0; chunk < g.sectorBitmapBlocks; chunk++) {
      const i = this.bitmapIndex(chunk);
      const s = this.state(i);
      if (s === SB_PRESENT) {
        const off = this.offset(i);
        if (off < MIB || off + SECTOR_BITMAP_BLOCK > file.logicalSize) {
          file.fail(`BAT entry ${i}: sector bitmap ${chunk} at file offset ${off} lies outside the file (${file.logicalSize} bytes)`);
        }
      } else if (s !== SB_NOT_PRESENT) {
        file.fail(`BAT entry ${i}: sector bitmap ${chunk} has invalid state ${s}`);
      }
    }
  }
}
