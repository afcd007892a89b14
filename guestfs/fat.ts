// FAT12/16/32 (Microsoft's "FAT: General Overview of On-Disk Format" 1.03), read-only.
//
// Boot sector (BPB): 11 bytes per sector u16, 13 sectors per cluster, 14 reserved sectors u16,
//   16 FAT count, 17 root entries u16 (0 on FAT32), 19 total sectors u16, 22 sectors per FAT u16,
//   32 total sectors u32; FAT32: 36 sectors per FAT u32, 44 root cluster, 71 label (11 bytes);
//   FAT12/16: 43 label; 510 55 AA. Layout: reserved | FATs | root directory (FAT12/16) | data.
//   The type follows from the cluster count alone: < 4085 FAT12, < 65525 FAT16, else FAT32.
// FAT: entry n = next cluster of cluster n (12, 16 or 28 bits); >= 0xFF8/0xFFF8/0x0FFFFFF8 end.
// Directory entry (32 bytes): 0 name 8.3 (0x00 end, 0xE5 deleted, 0x05 = a leading 0xE5),
//   11 attributes (0x01 RO, 0x02 hidden, 0x08 volume label, 0x10 dir, 0x0F = long-name slot),
//   12 case bits (0x08 lower-case base, 0x10 lower-case extension), 14 create time, 16 create date,
//   18 access date, 20 first cluster high, 22 write time, 24 write date, 26 first cluster low,
//   28 size u32. Date: year-1980<<9 | month<<5 | day; time: hour<<11 | minute<<5 | second/2
//   (local time of the guest, taken here as UTC as fls and mtools show it).
// Long-name slot: 0 order (0x40 = last), 1/14/28 13 UTF-16 units in three pieces, 13 checksum of
//   the 8.3 name; slots precede their short entry, last first.
import { GuestFsError } from './errors';
import { readAhead, type GuestEntry, type GuestFileSystem, type RandomAccess } from './types';

/** A directory holds at most 65,536 entries (the format's own limit): 2 MiB. */
const MAX_DIR_BYTES = 65536 * 32;
const PIECE = 4 * 1024 * 1024;

export function looksLikeFat(boot: Buffer): boolean {
  if (boot.length < 512 || boot.readUInt16LE(510) !== 0xaa55) return false;
  const bps = boot.readUInt16LE(11);
  const spc = boot[13];
  return [512, 1024, 2048, 4096].includes(bps) && spc > 0 && (spc & (spc - 1)) === 0 && boot[16] > 0 && boot.readUInt16LE(14) > 0 && boot.toString('latin1', 3, 7) !== 'NTFS';
}

function fatTime(date: number, time = 0): Date | undefined {
  if (date === 0) return undefined;
  const d = new Date(Date.UTC(1980 + (date >> 9), ((date >> 5) & 15) - 1, date & 31, time >> 11, (time >> 5) & 63, (time & 31) * 2));
  return Number.isNaN(d.getTime()) ? undefined : d;
}

function shortNameChecksum(raw: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + raw[i]) & 0xff;
  return sum;
}

export class FatFileSystem implements GuestFileSystem {
  readonly type: 'fat12' | 'fat16' | 'fat32';
  readonly label: string;
  private readonly bytesPerSector: number;
  private readonly clusterBytes: number;
  private readonly fatOffset: number;
  private readonly rootDirOffset: number;
  private readonly rootDirBytes: number;
  private readonly dataOffset: number;
  private readonly clusterCount: number;
  private readonly rootCluster: number;
  private readonly fatPages = new Map<number, Buffer>();

  private constructor(
    private readonly dev: RandomAccess,
    readonly volume: string,
    boot: Buffer,
  ) {
    const fail = (d: string): never => {
      throw new GuestFsError(volume, '', `FAT boot sector: ${d}`);
    };
    if (!looksLikeFat(boot)) fail('not a FAT boot sector');
    this.bytesPerSector = boot.readUInt16LE(11);
    this.clusterBytes = this.bytesPerSector * boot[13];
    const reserved = boot.readUInt16LE(14);
    const fats = boot[16];
    const rootEntries = boot.readUInt16LE(17);
    const total = boot.readUInt16LE(19) || boot.readUInt32LE(32);
    const fatSectors = boot.readUInt16LE(22) || boot.readUInt32LE(36);
    if (fatSectors === 0) fail('0 sectors per FAT');
    const rootSectors = Math.ceil((rootEntries * 32) / this.bytesPerSector);
    const dataSector = reserved + fats * fatSectors + rootSectors;
    if (total * this.bytesPerSector > dev.size) fail(`${total} sectors of ${this.bytesPerSector} bytes, the volume holds ${dev.size} bytes`);
    if (dataSector >= total) fail(`data region starts at sector ${dataSector}, past the ${total} sectors of the volume`);
    this.clusterCount = Math.floor((total - dataSector) / boot[13]);
    this.type = this.clusterCount < 4085 ? 'fat12' : this.clusterCount < 65525 ? 'fat16' : 'fat32';
    const entryBits = this.type === 'fat12' ? 12 : this.type === 'fat16' ? 16 : 32;
    if (fatSectors * this.bytesPerSector * 8 < (this.clusterCount + 2) * entryBits) fail(`a FAT of ${fatSectors} sectors cannot map ${this.clusterCount} clusters`);
    this.fatOffset = reserved * this.bytesPerSector;
    this.rootDirOffset = (reserved + fats * fatSectors) * this.bytesPerSector;
    this.rootDirBytes = rootSectors * this.bytesPerSector;
    this.dataOffset = dataSector * this.bytesPerSector;
    this.rootCluster = this.type === 'fat32' ? boot.readUInt32LE(44) : 0;
    if (this.type === 'fat32' && (this.rootCluster < 2 || this.rootCluster >= this.clusterCount + 2)) fail(`root cluster ${this.rootCluster} outside clusters 2..${this.clusterCount + 1}`);
    this.label = boot.toString('latin1', this.type === 'fat32' ? 71 : 43, this.type === 'fat32' ? 82 : 54).trimEnd();
  }

  static async open(dev: RandomAccess, volume: string): Promise<FatFileSystem> {
    if (dev.size < 512) throw new GuestFsError(volume, '', 'FAT boot sector: volume shorter than one sector');
    const fs = new FatFileSystem(dev, volume, await dev.read(0, 512));
    // The root directory's volume-label entry is what Windows and mlabel show; the BPB copy may be stale.
    const rootEntries = await fs.rawEntries(await fs.root());
    const labelEntry = rootEntries.find((e) => e.label !== undefined);
    if (labelEntry) (fs as { label: string }).label = labelEntry.label!;
    if (fs.label === 'NO NAME') (fs as { label: string }).label = '';
    return fs;
  }

  async root(): Promise<GuestEntry> {
    return { name: '', path: '/', type: 'dir', size: 0, links: 1, id: this.rootCluster };
  }

  async list(dir: GuestEntry): Promise<GuestEntry[]> {
    return (await this.rawEntries(dir)).filter((e) => e.label === undefined).map((e) => e.entry!);
  }

  async *content(file: GuestEntry): AsyncGenerator<Buffer> {
    if (file.type !== 'file') throw new GuestFsError(this.volume, file.path, 'not a file');
    let left = file.size;
    if (left === 0) return;
    const clusters = await this.chain(file.id, file.path, Math.ceil(file.size / this.clusterBytes));
    if (clusters.length * this.clusterBytes < file.size) throw new GuestFsError(this.volume, file.path, `cluster chain of ${clusters.length} clusters holds less than the ${file.size} bytes the directory entry claims`);
    const self = this;
    function* pieces(): Generator<() => Promise<Buffer>> {
      for (const run of runsOf(clusters)) {
        for (let c = 0; c < run.count && left > 0; ) {
          const n = Math.min(run.count - c, Math.max(1, Math.floor(PIECE / self.clusterBytes)));
          const len = Math.min(n * self.clusterBytes, left);
          const at = self.clusterOffset(run.first + c);
          yield () => self.dev.read(at, len);
          left -= len;
          c += n;
        }
      }
    }
    yield* readAhead(pieces());
  }

  private clusterOffset(c: number): number {
    return this.dataOffset + (c - 2) * this.clusterBytes;
  }

  private async fatEntry(c: number): Promise<number> {
    const byteOffset = this.type === 'fat12' ? c + (c >> 1) : this.type === 'fat16' ? c * 2 : c * 4;
    const page = Math.floor(byteOffset / 4096);
    let buf = this.fatPages.get(page);
    if (!buf) {
      // Two pages: a FAT12 entry may straddle the boundary.
      buf = await this.dev.read(this.fatOffset + page * 4096, Math.min(8192, this.dataOffset - this.fatOffset - page * 4096));
      if (this.fatPages.size > 256) this.fatPages.clear();
      this.fatPages.set(page, buf);
    }
    const o = byteOffset - page * 4096;
    if (this.type === 'fat12') {
      const v = buf.readUInt16LE(o);
      const e = c & 1 ? v >> 4 : v & 0xfff;
      return e >= 0xff8 ? -1 : e === 0xff7 ? -2 : e;
    }
    if (this.type === 'fat16') {
      const e = buf.readUInt16LE(o);
      return e >= 0xfff8 ? -1 : e === 0xfff7 ? -2 : e;
    }
    const e = buf.readUInt32LE(o) & 0x0fffffff;
    return e >= 0x0ffffff8 ? -1 : e === 0x0ffffff7 ? -2 : e;
  }

  /** The clusters of a chain; a loop, a free or bad cluster, or a chain past `limit` is a defect. */
  private async chain(first: number, path: string, limit: number): Promise<number[]> {
    const out: number[] = [];
    const seen = new Set<number>();
    for (let c = first; ; ) {
      if (c < 2 || c >= this.clusterCount + 2) throw new GuestFsError(this.volume, path, `cluster chain reaches cluster ${c}, outside clusters 2..${this.clusterCount + 1}`);
      if (seen.has(c)) throw new GuestFsError(this.volume, path, `cluster chain loops back to cluster ${c}`);
      seen.add(c);
      out.push(c);
      if (out.length >= limit) return out;
      const next = await this.fatEntry(c);
      if (next === -1) return out;
      if (next === -2) throw new GuestFsError(this.volume, path, `cluster chain reaches bad cluster after ${c}`);
      if (next === 0) throw new GuestFsError(this.volume, path, `cluster chain reaches free cluster after ${c}`);
      c = next;
    }
  }

  private async dirBytes(dir: GuestEntry): Promise<Buffer> {
    if (dir.type !== 'dir') throw new GuestFsError(this.volume, dir.path, 'not a directory');
    if (dir.id === 0) return this.dev.read(this.rootDirOffset, this.rootDirBytes); // FAT12/16 root
    const clusters = await this.chain(dir.id, dir.path, Math.ceil(MAX_DIR_BYTES / this.clusterBytes));
    const parts = await Promise.all(runsOf(clusters).map((r) => this.dev.read(this.clusterOffset(r.first), r.count * this.clusterBytes)));
    return Buffer.concat(parts);
  }

  private async rawEntries(dir: GuestEntry): Promise<Array<{ label?: string; entry?: GuestEntry }>> {
    const b = await this.dirBytes(dir);
    const out: Array<{ label?: string; entry?: GuestEntry }> = [];
    let lfn: string[] = [];
    let lfnSum = -1;
    const base = dir.path === '/' ? '' : dir.path;
    for (let o = 0; o + 32 <= b.length; o += 32) {
      const e = b.subarray(o, o + 32);
      if (e[0] === 0) break;
      if (e[0] === 0xe5) {
        lfn = [];
        continue;
      }
      const attr = e[11];
      if ((attr & 0x3f) === 0x0f) {
        const ord = e[0] & 0x1f;
        if (e[0] & 0x40) lfn = [];
        lfnSum = e[13];
        const units = Buffer.concat([e.subarray(1, 11), e.subarray(14, 26), e.subarray(28, 32)]);
        let s = units.toString('utf16le');
        const nul = s.indexOf('\0');
        if (nul >= 0) s = s.slice(0, nul);
        lfn[ord - 1] = s;
        continue;
      }
      const raw = Buffer.from(e.subarray(0, 11));
      if (raw[0] === 0x05) raw[0] = 0xe5;
      if (attr & 0x08) {
        if (dir.path === '/' && !(attr & 0x10)) out.push({ label: raw.toString('latin1').trimEnd() });
        lfn = [];
        continue;
      }
      let baseName = raw.toString('latin1', 0, 8).trimEnd();
      let ext = raw.toString('latin1', 8, 11).trimEnd();
      if (e[12] & 0x08) baseName = baseName.toLowerCase();
      if (e[12] & 0x10) ext = ext.toLowerCase();
      let name = ext ? `${baseName}.${ext}` : baseName;
      if (lfn.length && lfnSum === shortNameChecksum(e) && lfn.every((x) => x !== undefined)) name = lfn.join('');
      lfn = [];
      if (name === '.' || name === '..') continue;
      const isDir = (attr & 0x10) !== 0;
      const first = (e.readUInt16LE(20) << 16) | e.readUInt16LE(26);
      out.push({
        entry: {
          name,
          path: `${base}/${name}`,
          type: isDir ? 'dir' : 'file',
          size: isDir ? 0 : e.readUInt32LE(28),
          mtime: fatTime(e.readUInt16LE(24), e.readUInt16LE(22)),
          atime: fatTime(e.readUInt16LE(18)),
          created: fatTime(e.readUInt16LE(16), e.readUInt16LE(14)),
          links: 1,
          id: first,
        },
      });
    }
    for (const x of out) {
      if (x.entry?.type === 'dir' && x.entry.id === 0) throw new GuestFsError(this.volume, x.entry.path, 'directory entry with first cluster 0');
    }
    return out;
  }
}

function runsOf(clusters: number[]): Array<{ first: number; count: number }> {
  const runs: Array<{ first: number; count: number }> = [];
  for (const c of clusters) {
    const last = runs[runs.length - 1];
    if (last && last.first + last.count === c) last.count++;
    else runs.push({ first: c, count: 1 });
  }
  return runs;
}
