// ext4 (and ext2/3 volumes with the same layout), read-only: kernel.org "ext4 Data Structures
// and Algorithms".
//
// Superblock at byte 1024: 0 inode count, 4 blocks (low 32), 20 first data block, 24 log2(block
//   size) - 10, 32 blocks per group, 40 inodes per group, 56 magic 0xEF53, 76 revision, 88 inode
//   size u16, 96 incompatible features, 120 label (16 bytes), 254 group descriptor size u16
//   (64BIT), 336 blocks (high 32).
// Group descriptors from the block after the superblock's: 8 inode table (low 32), 40 (high 32,
//   when descriptors are 64 bytes). Inode n lives in group (n-1) / inodes-per-group, slot
//   (n-1) % inodes-per-group of that group's inode table.
// Inode: 0 mode u16 (0x4000 dir, 0x8000 file, 0xA000 symlink), 4 size (low), 8 atime, 12 ctime,
//   16 mtime, 26 link count u16, 32 flags (0x80000 extents, 0x10000000 inline data, 0x800
//   encrypted, 0x1000 hashed directory), 40 i_block (60 bytes), 108 size (high), 128 extra size
//   u16, 132/136/140 ctime/mtime/atime extra (epoch bits 0-1, nanoseconds << 2).
// Extent tree in i_block (and in tree blocks): header 0 magic 0xF30A, 2 entries, 4 max, 6 depth;
//   12-byte entries: index (depth > 0) = 0 first logical block, 4 child block (low), 8 (high);
//   leaf = 0 first logical block, 4 length u16 (> 32768: uninitialised, reads as zeros, length -
//   32768), 6 start (high u16), 8 start (low u32). Blocks no extent covers read as zeros.
// Inline data (INLINE_DATA): the first 60 bytes in i_block, the rest in the in-inode extended
//   attribute "system.data" (after the extra fields: magic 0xEA020000, then entries 0 name length,
//   1 name index (7 = system.), 2 value offset u16 (from the first entry), 8 value size u32, 16 name).
// Directory entries: 0 inode, 4 record length u16, 6 name length, 7 type, 8 name. Hashed (htree)
//   directories keep their index in entries with inode 0 covering whole blocks, so a linear
//   scan of every block sees exactly the real entries. An inline directory starts with the parent's
//   inode number (4 bytes), then entries.
import { GuestFsError } from './errors';
import { readAhead, type EntryType, type GuestEntry, type GuestFileSystem, type RandomAccess } from './types';

const INCOMPAT_FILETYPE = 0x2;
const INCOMPAT_RECOVER = 0x4;
const INCOMPAT_JOURNAL_DEV = 0x8;
const INCOMPAT_META_BG = 0x10;
const INCOMPAT_EXTENTS = 0x40;
const INCOMPAT_64BIT = 0x80;
const INCOMPAT_MMP = 0x100;
const INCOMPAT_FLEX_BG = 0x200;
const INCOMPAT_EA_INODE = 0x400;
const INCOMPAT_DIRDATA = 0x1000;
const INCOMPAT_CSUM_SEED = 0x2000;
const INCOMPAT_LARGEDIR = 0x4000;
const INCOMPAT_INLINE_DATA = 0x8000;
const INCOMPAT_ENCRYPT = 0x10000;
const INCOMPAT_CASEFOLD = 0x20000;
const KNOWN_INCOMPAT = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_MMP | INCOMPAT_FLEX_BG | INCOMPAT_EA_INODE | INCOMPAT_CSUM_SEED | INCOMPAT_LARGEDIR | INCOMPAT_INLINE_DATA | INCOMPAT_ENCRYPT | INCOMPAT_CASEFOLD;

const FL_ENCRYPT = 0x800;
const FL_EXTENTS = 0x80000;
const FL_INLINE_DATA = 0x10000000;
const MAX_EXTENT_DEPTH = 5;
/** A directory read whole: larger ones are refused rather than held in memory. */
const MAX_DIR_BYTES = 256 * 1024 * 1024;
const PIECE = 4 * 1024 * 1024;

interface Inode {
  number: number;
  mode: number;
  size: number;
  links: number;
  flags: number;
  block: Buffer;
  raw: Buffer;
  atime: Date;
  ctime: Date;
  mtime: Date;
}

interface Extent {
  logical: number;
  length: number;
  physical: number;
  uninit: boolean;
}

export function looksLikeExt(sb: Buffer): boolean {
  return sb.length >= 1024 && sb.readUInt16LE(56) === 0xef53;
}

export class Ext4FileSystem implements GuestFileSystem {
  readonly type = 'ext4' as const;
  readonly label: string;
  private readonly blockSize: number;
  private readonly inodesPerGroup: number;
  private readonly inodeSize: number;
  private readonly inodeCount: number;
  private readonly blockCount: number;
  private readonly descSize: number;
  private readonly descStart: number;
  private readonly groupCount: number;
  private readonly incompat: number;

  private constructor(
    private readonly dev: RandomAccess,
    readonly volume: string,
    sb: Buffer,
  ) {
    const fail = (d: string): never => {
      throw new GuestFsError(volume, '', `ext4 superblock: ${d}`);
    };
    if (!looksLikeExt(sb)) fail('no 0xEF53 magic at byte 1080');
    const log = sb.readUInt32LE(24);
    if (log > 6) fail(`block size 2^${10 + log} is not 1 KiB..64 KiB`);
    this.blockSize = 1024 << log;
    this.incompat = sb.readUInt32LE(96);
    const unknown = this.incompat & ~KNOWN_INCOMPAT;
    if (unknown & INCOMPAT_META_BG) fail('meta_bg group descriptors are not read by this reader');
    if (unknown & INCOMPAT_JOURNAL_DEV) fail('this is an external journal device, not a file system');
    if (unknown & INCOMPAT_DIRDATA) fail('dirdata (Lustre) directories are not read by this reader');
    if (unknown) fail(`unknown incompatible features 0x${unknown.toString(16)}`);
    this.inodeCount = sb.readUInt32LE(0);
    this.blockCount = sb.readUInt32LE(4) + (this.incompat & INCOMPAT_64BIT ? sb.readUInt32LE(336) * 2 ** 32 : 0);
    const blocksPerGroup = sb.readUInt32LE(32);
    this.inodesPerGroup = sb.readUInt32LE(40);
    this.inodeSize = sb.readUInt32LE(76) >= 1 ? sb.readUInt16LE(88) : 128;
    this.descSize = this.incompat & INCOMPAT_64BIT ? sb.readUInt16LE(254) : 32;
    if (this.blockCount * this.blockSize > dev.size) fail(`${this.blockCount} blocks of ${this.blockSize} bytes, the volume holds ${dev.size} bytes`);
    if (blocksPerGroup === 0 || this.inodesPerGroup === 0 || this.inodeCount === 0) fail('zero blocks or inodes per group');
    if (this.inodeSize < 128 || this.inodeSize > this.blockSize || (this.inodeSize & (this.inodeSize - 1)) !== 0) fail(`inode size ${this.inodeSize}`);
    if (this.descSize < 32 || this.descSize > 1024) fail(`group descriptor size ${this.descSize}`);
    this.groupCount = Math.ceil((this.blockCount - sb.readUInt32LE(20)) / blocksPerGroup);
    if (this.groupCount * this.inodesPerGroup < this.inodeCount) fail(`${this.groupCount} groups of ${this.inodesPerGroup} inodes cannot hold ${this.inodeCount} inodes`);
    this.descStart = (sb.readUInt32LE(20) + 1) * this.blockSize;
    this.label = sb.toString('utf8', 120, 136).replace(/\0.*$/s, '');
  }

  static async open(dev: RandomAccess, volume: string): Promise<Ext4FileSystem> {
    if (dev.size < 2048) throw new GuestFsError(volume, '', 'ext4 superblock: volume shorter than 2 KiB');
    return new Ext4FileSystem(dev, volume, await dev.read(1024, 1024));
  }

  async root(): Promise<GuestEntry> {
    const ino = await this.inode(2, '/');
    return this.entryOf(ino, '', '/');
  }

  async list(dir: GuestEntry): Promise<GuestEntry[]> {
    const ino = await this.inode(dir.id, dir.path);
    if ((ino.mode & 0xf000) !== 0x4000) throw new GuestFsError(this.volume, dir.path, 'not a directory');
    if (ino.flags & FL_ENCRYPT) throw new GuestFsError(this.volume, dir.path, 'directory is encrypted (fscrypt): its names cannot be read without the key');
    let data: Buffer;
    let start = 0;
    if (ino.flags & FL_INLINE_DATA) {
      data = await this.inlineData(ino, dir.path);
      start = 4; // the parent's inode number
    } else {
      if (ino.size > MAX_DIR_BYTES) throw new GuestFsError(this.volume, dir.path, `directory of ${ino.size} bytes is larger than ${MAX_DIR_BYTES}`);
      const parts: Buffer[] = [];
      for await (const p of this.fileBytes(ino, dir.path)) parts.push(p);
      data = Buffer.concat(parts);
    }
    const names: Array<{ inode: number; name: string }> = [];
    // Entries never cross a block (or, inline, the i_block / attribute boundary).
    const regions: Array<[number, number]> = [];
    if (ino.flags & FL_INLINE_DATA) regions.push([start, Math.min(60, data.length)], [60, data.length]);
    else for (let o = 0; o < data.length; o += this.blockSize) regions.push([o, Math.min(data.length, o + this.blockSize)]);
    for (const [from, end] of regions) {
      for (let o = from; o + 8 <= end; ) {
        const inode = data.readUInt32LE(o);
        const recLen = data.readUInt16LE(o + 4);
        const nameLen = data[o + 6];
        if (recLen < 8 || o + recLen > end || 8 + nameLen > recLen) {
          throw new GuestFsError(this.volume, dir.path, `directory entry at byte ${o}: record length ${recLen}, name length ${nameLen} do not fit`);
        }
        if (inode !== 0 && nameLen > 0) {
          const name = data.toString('utf8', o + 8, o + 8 + nameLen);
          if (name !== '.' && name !== '..') names.push({ inode, name });
        }
        o += recLen;
      }
    }
    const base = dir.path === '/' ? '' : dir.path;
    const out: GuestEntry[] = [];
    for (const n of names) out.push(this.entryOf(await this.inode(n.inode, `${base}/${n.name}`), n.name, `${base}/${n.name}`));
    for (const e of out) if (e.type === 'symlink') e.target = await this.symlinkTarget(e);
    return out;
  }

  async *content(file: GuestEntry): AsyncGenerator<Buffer> {
    const ino = await this.inode(file.id, file.path);
    if ((ino.mode & 0xf000) !== 0x8000) throw new GuestFsError(this.volume, file.path, 'not a regular file');
    if (ino.flags & FL_ENCRYPT) throw new GuestFsError(this.volume, file.path, 'file is encrypted (fscrypt) and cannot be read without the key');
    if (ino.flags & FL_INLINE_DATA) {
      yield await this.inlineData(ino, file.path);
      return;
    }
    yield* this.fileBytes(ino, file.path);
  }

  private async symlinkTarget(e: GuestEntry): Promise<string> {
    const ino = await this.inode(e.id, e.path);
    if (ino.size > 4096) throw new GuestFsError(this.volume, e.path, `symlink target of ${ino.size} bytes`);
    // A fast symlink keeps its target in i_block.
    if (!(ino.flags & (FL_EXTENTS | FL_INLINE_DATA)) && ino.size < 60) return ino.block.toString('utf8', 0, ino.size);
    const parts: Buffer[] = [];
    if (ino.flags & FL_INLINE_DATA) parts.push(await this.inlineData(ino, e.path));
    else for await (const p of this.fileBytes(ino, e.path)) parts.push(p);
    return Buffer.concat(parts).toString('utf8');
  }

  private entryOf(ino: Inode, name: string, path: string): GuestEntry {
    const fmt = ino.mode & 0xf000;
    const type: EntryType = fmt === 0x4000 ? 'dir' : fmt === 0x8000 ? 'file' : fmt === 0xa000 ? 'symlink' : 'other';
    return {
      name, path, type, size: ino.size, links: ino.links, id: ino.number, mtime: ino.mtime, atime: ino.atime, ctime: ino.ctime,
      unreadable: ino.flags & FL_ENCRYPT ? 'encrypted (fscrypt)' : undefined,
    };
  }

  private async inode(n: number, path: string): Promise<Inode> {
    if (!Number.isInteger(n) || n < 1 || n > this.inodeCount) throw new GuestFsError(this.volume, path, `inode ${n} outside 1..${this.inodeCount}`);
    const group = Math.floor((n - 1) / this.inodesPerGroup);
    const desc = await this.dev.read(this.descStart + group * this.descSize, this.descSize);
    const table = desc.readUInt32LE(8) + (this.descSize >= 64 ? desc.readUInt32LE(40) * 2 ** 32 : 0);
    const at = table * this.blockSize + ((n - 1) % this.inodesPerGroup) * this.inodeSize;
    if (table === 0 || at + this.inodeSize > this.blockCount * this.blockSize) throw new GuestFsError(this.volume, path, `inode ${n}: inode table of group ${group} at block ${table} outside the volume`);
    const raw = await this.dev.read(at, this.inodeSize);
    const extra = this.inodeSize > 128 ? raw.readUInt16LE(128) : 0;
    const time = (sec: number, extraAt: number) => {
      const x = extra >= extraAt - 128 + 4 && this.inodeSize >= extraAt + 4 ? raw.readUInt32LE(extraAt) : 0;
      const s = (sec | 0) + (x & 3) * 2 ** 32; // signed 32-bit seconds plus the epoch bits
      return new Date(s * 1000 + Math.floor((x >>> 2) / 1e6));
    };
    return {
      number: n,
      mode: raw.readUInt16LE(0),
      size: raw.readUInt32LE(4) + raw.readUInt32LE(108) * 2 ** 32,
      links: raw.readUInt16LE(26),
      flags: raw.readUInt32LE(32),
      block: raw.subarray(40, 100),
      raw,
      ctime: time(raw.readInt32LE(12), 132),
      mtime: time(raw.readInt32LE(16), 136),
      atime: time(raw.readInt32LE(8), 140),
    };
  }

  private async inlineData(ino: Inode, path: string): Promise<Buffer> {
    const first = ino.block.subarray(0, Math.min(60, ino.size));
    if (ino.size <= 60) return Buffer.from(first);
    const extra = ino.raw.readUInt16LE(128);
    const at = 128 + extra;
    if (at + 4 > ino.raw.length || ino.raw.readUInt32LE(at) !== 0xea020000) throw new GuestFsError(this.volume, path, `inline data of ${ino.size} bytes but no in-inode extended attributes`);
    const entries = at + 4;
    for (let o = entries; o + 16 <= ino.raw.length && ino.raw.readUInt32LE(o) !== 0; ) {
      const nameLen = ino.raw[o];
      const index = ino.raw[o + 1];
      const valueOffset = ino.raw.readUInt16LE(o + 2);
      const valueSize = ino.raw.readUInt32LE(o + 8);
      const name = ino.raw.toString('latin1', o + 16, o + 16 + nameLen);
      if (index === 7 && name === 'data') {
        if (entries + valueOffset + valueSize > ino.raw.length) throw new GuestFsError(this.volume, path, `inline data attribute of ${valueSize} bytes runs past the inode`);
        const rest = ino.raw.subarray(entries + valueOffset, entries + valueOffset + valueSize);
        const all = Buffer.concat([first, rest]);
        if (all.length < ino.size) throw new GuestFsError(this.volume, path, `inline data holds ${all.length} bytes, the inode says ${ino.size}`);
        return all.subarray(0, ino.size);
      }
      o += (16 + nameLen + 3) & ~3;
    }
    throw new GuestFsError(this.volume, path, `inline data of ${ino.size} bytes but no system.data attribute`);
  }

  /** Leaf extents in logical order, read through the tree; depth and bounds checked. */
  private async extents(ino: Inode, path: string): Promise<Extent[]> {
    const out: Extent[] = [];
    const maxBlocks = Math.ceil(ino.size / this.blockSize);
    // A tree never shares a node: a block reached twice is a loop or a hostile fan-out (work without end).
    const seen = new Set<number>();
    const walk = async (node: Buffer, depthExpected: number | undefined): Promise<void> => {
      if (seen.size > 1 + Math.ceil(maxBlocks / 4) + 16) throw new GuestFsError(this.volume, path, 'extent tree has more nodes than the file has blocks');
      if (out.length > this.blockCount) throw new GuestFsError(this.volume, path, `more extents than the volume has blocks (${this.blockCount})`);
      if (node.readUInt16LE(0) !== 0xf30a) throw new GuestFsError(this.volume, path, 'extent tree node without the 0xF30A magic');
      const entries = node.readUInt16LE(2);
      const depth = node.readUInt16LE(6);
      if (depth > MAX_EXTENT_DEPTH || (depthExpected !== undefined && depth !== depthExpected)) throw new GuestFsError(this.volume, path, `extent tree node of depth ${depth} where ${depthExpected ?? `at most ${MAX_EXTENT_DEPTH}`} belongs`);
      if (12 + entries * 12 > node.length) throw new GuestFsError(this.volume, path, `extent tree node claims ${entries} entries, room for ${(node.length - 12) / 12}`);
      for (let i = 0; i < entries; i++) {
        const e = node.subarray(12 + i * 12, 24 + i * 12);
        if (depth === 0) {
          let length = e.readUInt16LE(4);
          const uninit = length > 32768;
          if (uninit) length -= 32768;
          const physical = e.readUInt16LE(6) * 2 ** 32 + e.readUInt32LE(8);
          if (physical + length > this.blockCount) throw new GuestFsError(this.volume, path, `extent of ${length} blocks at block ${physical} runs past the volume's ${this.blockCount} blocks`);
          out.push({ logical: e.readUInt32LE(0), length, physical, uninit });
        } else {
          const child = e.readUInt32LE(4) + e.readUInt16LE(8) * 2 ** 32;
          if (child >= this.blockCount) throw new GuestFsError(this.volume, path, `extent index points at block ${child}, past the volume`);
          if (seen.has(child)) throw new GuestFsError(this.volume, path, `extent tree reaches block ${child} twice`);
          seen.add(child);
          await walk(await this.dev.read(child * this.blockSize, this.blockSize), depth - 1);
        }
      }
    };
    await walk(ino.block, undefined);
    out.sort((a, b) => a.logical - b.logical);
    for (let i = 1; i < out.length; i++) {
      if (out[i].logical < out[i - 1].logical + out[i - 1].length) throw new GuestFsError(this.volume, path, `extents overlap at logical block ${out[i].logical}`);
    }
    return out;
  }

  private async *fileBytes(ino: Inode, path: string): AsyncGenerator<Buffer> {
    if (!(ino.flags & FL_EXTENTS)) {
      if (ino.size === 0) return;
      throw new GuestFsError(this.volume, path, 'block-mapped file (ext2/ext3 indirect blocks): not read by this reader');
    }
    const extents = await this.extents(ino, path);
    const { dev, blockSize } = this;
    function* pieces(): Generator<() => Promise<Buffer>> {
      let pos = 0; // bytes of the file covered so far
      function* zerosUpTo(upTo: number): Generator<() => Promise<Buffer>> {
        while (pos < upTo) {
          const n = Math.min(PIECE, upTo - pos);
          pos += n;
          yield async () => Buffer.alloc(n);
        }
      }
      for (const x of extents) {
        const start = x.logical * blockSize;
        if (start >= ino.size) break;
        yield* zerosUpTo(start);
        const end = Math.min(ino.size, start + x.length * blockSize);
        while (pos < end) {
          const n = Math.min(PIECE, end - pos);
          const at = x.physical * blockSize + (pos - start);
          yield x.uninit ? async () => Buffer.alloc(n) : () => dev.read(at, n);
          pos += n;
        }
      }
      yield* zerosUpTo(ino.size);
    }
    yield* readAhead(pieces());
  }
}
