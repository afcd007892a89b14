// NTFS (3.1, as Windows and mkntfs write it), read-only. The format as The Sleuth Kit and the
// Linux ntfs3/ntfs-3g drivers document it:
//
// Boot sector: 3 "NTFS    ", 11 bytes per sector u16, 13 sectors per cluster (>= 0xF4: 2^(256-x)),
//   40 total sectors u64, 48 $MFT cluster u64, 64 MFT record size (> 0: clusters; < 0 as i8:
//   2^-x bytes), 68 index record size (the same encoding).
// MFT record ("FILE"): 4 update sequence offset u16, 6 its count u16 (sectors + 1), 16 sequence
//   u16, 18 link count, 20 first attribute offset u16, 22 flags (1 in use, 2 directory), 24 bytes
//   used u32, 32 base record reference u64 (0 in a base record). Fixups: the last two bytes of
//   every 512-byte stride hold the update sequence number and are replaced from the array; a
//   mismatch is a torn or damaged record. Record n is at byte n × record size of $MFT's $DATA.
// Attribute: 0 type u32 (0xFFFFFFFF ends), 4 length u32, 8 non-resident, 9 name length (UTF-16
//   units), 10 name offset u16, 12 flags (0x0001 compressed, 0x4000 encrypted, 0x8000 sparse);
//   resident: 16 value length u32, 20 value offset u16; non-resident: 16 first VCN, 24 last VCN,
//   32 runlist offset u16, 34 compression unit, 40 allocated, 48 data size, 56 initialised size.
//   Types: 0x10 $STANDARD_INFORMATION (0 created, 8 modified, 16 MFT changed, 24 accessed;
//   FILETIME: 100 ns since 1601), 0x20 $ATTRIBUTE_LIST (entries: 0 type, 4 length u16, 6 name
//   length, 7 name offset, 8 first VCN, 16 record reference), 0x30 $FILE_NAME (0 parent
//   reference, 48 size, 56 flags, 64 name length, 65 namespace: 0 POSIX, 1 Win32, 2 DOS, 3 both,
//   66 name), 0x80 $DATA, 0x90 $INDEX_ROOT, 0xA0 $INDEX_ALLOCATION.
// Runlist: a header byte (low nibble: bytes of the length, high nibble: bytes of the signed cluster
//   offset from the previous run's start; no offset bytes = a sparse run), 0 ends.
// $I30 directory index: $INDEX_ROOT = 0 type, 8 index record size, 16 node header (0 entries
//   offset, 4 used size, 12 flags: 1 = has children); $INDEX_ALLOCATION holds "INDX" records
//   (fixups as MFT records; node header at 24). Entry: 0 file reference (low 48 bits: record,
//   high 16: sequence), 8 length u16, 10 key length u16, 12 flags (1 child node, 2 last entry),
//   16 key = a $FILE_NAME value; the child's VCN in the entry's last 8 bytes.
import { GuestFsError } from './errors';
import { readAhead, type GuestEntry, type GuestFileSystem, type RandomAccess } from './types';

const ATTR_STANDARD_INFORMATION = 0x10;
const ATTR_ATTRIBUTE_LIST = 0x20;
const ATTR_FILE_NAME = 0x30;
const ATTR_DATA = 0x80;
const ATTR_INDEX_ROOT = 0x90;
const ATTR_INDEX_ALLOCATION = 0xa0;
const FLAG_COMPRESSED = 0x0001;
const FLAG_ENCRYPTED = 0x4000;
const ROOT_RECORD = 5;
const PIECE = 4 * 1024 * 1024;
/** Bounds that no real volume comes near: a hostile one meets them instead of exhausting memory. */
const MAX_RUNS = 1 << 20;
const MAX_EXTENSION_RECORDS = 4096;
const MAX_INDEX_RECORDS = 1 << 16;

interface Attribute {
  type: number;
  name: string;
  flags: number;
  resident: boolean;
  value?: Buffer;
  firstVcn: number;
  lastVcn: number;
  dataSize: number;
  initializedSize: number;
  compressionUnit: number;
  runs: Run[];
}

interface Run {
  vcn: number;
  length: number;
  /** undefined = sparse */
  lcn?: number;
}

interface MftRecord {
  number: number;
  flags: number;
  sequence: number;
  attributes: Attribute[];
}

export function looksLikeNtfs(boot: Buffer): boolean {
  return boot.length >= 512 && boot.toString('latin1', 3, 11) === 'NTFS    ' && boot.readUInt16LE(510) === 0xaa55;
}

function filetime(b: Buffer, at: number): Date | undefined {
  const t = b.readBigUInt64LE(at);
  if (t === 0n) return undefined;
  return new Date(Number(t / 10000n) - 11644473600000);
}

function sizeCode(v: number, clusterSize: number): number {
  const s = v > 127 ? v - 256 : v;
  return s > 0 ? s * clusterSize : 2 ** -s;
}

export class NtfsFileSystem implements GuestFileSystem {
  readonly type = 'ntfs' as const;
  label = '';
  private readonly clusterSize: number;
  private readonly clusterCount: number;
  private readonly recordSize: number;
  private readonly indexRecordSize: number;
  private mftRuns: Run[] = [];
  private readonly records = new Map<number, MftRecord>();

  private constructor(
    private readonly dev: RandomAccess,
    readonly volume: string,
    boot: Buffer,
  ) {
    const fail = (d: string): never => {
      throw new GuestFsError(volume, '', `NTFS boot sector: ${d}`);
    };
    const bps = boot.readUInt16LE(11);
    if (![512, 1024, 2048, 4096].includes(bps)) fail(`${bps} bytes per sector`);
    const spc = boot[13] >= 0xf4 ? 2 ** (256 - boot[13]) : boot[13];
    if (spc === 0 || (spc & (spc - 1)) !== 0 || bps * spc > 2 * 1024 * 1024) fail(`${boot[13]} sectors per cluster`);
    this.clusterSize = bps * spc;
    const totalSectors = Number(boot.readBigUInt64LE(40));
    if (totalSectors * bps > dev.size + bps) fail(`${totalSectors} sectors, the volume holds ${dev.size} bytes`);
    this.clusterCount = Math.floor(Math.min(totalSectors * bps, dev.size) / this.clusterSize);
    this.recordSize = sizeCode(boot[64], this.clusterSize);
    this.indexRecordSize = sizeCode(boot[68], this.clusterSize);
    if (this.recordSize < 512 || this.recordSize > 65536 || (this.recordSize & (this.recordSize - 1)) !== 0) fail(`MFT record size ${this.recordSize}`);
    if (this.indexRecordSize < 512 || this.indexRecordSize > 65536 || (this.indexRecordSize & (this.indexRecordSize - 1)) !== 0) fail(`index record size ${this.indexRecordSize}`);
    const mftLcn = Number(boot.readBigUInt64LE(48));
    if (mftLcn >= this.clusterCount) fail(`$MFT at cluster ${mftLcn}, past the ${this.clusterCount} clusters of the volume`);
    // Until $MFT's own runlist is read, record 0 is found where the boot sector says.
    this.mftRuns = [{ vcn: 0, length: Math.ceil((16 * this.recordSize) / this.clusterSize), lcn: mftLcn }];
  }

  static async open(dev: RandomAccess, volume: string): Promise<NtfsFileSystem> {
    if (dev.size < 512) throw new GuestFsError(volume, '', 'NTFS boot sector: volume shorter than one sector');
    const fs = new NtfsFileSystem(dev, volume, await dev.read(0, 512));
    const mft = await fs.record(0, '$MFT');
    const data = (await fs.attributes(mft, '$MFT')).filter((a) => a.type === ATTR_DATA && a.name === '');
    if (data.length === 0 || data.some((a) => a.resident)) throw new GuestFsError(volume, '$MFT', 'no non-resident $DATA attribute');
    fs.mftRuns = data.sort((a, b) => a.firstVcn - b.firstVcn).flatMap((a) => a.runs);
    fs.records.clear();
    const vol = await fs.record(3, '$Volume');
    const name = vol.attributes.find((a) => a.type === 0x60 && a.resident);
    fs.label = name?.value ? name.value.toString('utf16le') : '';
    return fs;
  }

  async root(): Promise<GuestEntry> {
    return { ...(await this.entryOf(ROOT_RECORD, '', '/')), name: '' };
  }

  async list(dir: GuestEntry): Promise<GuestEntry[]> {
    const rec = await this.record(dir.id, dir.path);
    if (!(rec.flags & 2)) throw new GuestFsError(this.volume, dir.path, 'not a directory');
    const attrs = await this.attributes(rec, dir.path);
    const root = attrs.find((a) => a.type === ATTR_INDEX_ROOT && a.name === '$I30');
    if (!root?.value || root.value.length < 32) throw new GuestFsError(this.volume, dir.path, 'directory without a resident $I30 index root');
    const found: Array<{ record: number; name: string; key: Buffer }> = [];
    const take = (node: Buffer, headerAt: number, where: string): number[] => {
      const entriesAt = headerAt + node.readUInt32LE(headerAt);
      const used = headerAt + node.readUInt32LE(headerAt + 4);
      if (used > node.length || entriesAt > used) throw new GuestFsError(this.volume, dir.path, `${where}: index node of ${used - headerAt} bytes does not fit`);
      const children: number[] = [];
      for (let o = entriesAt; ; ) {
        if (o + 16 > used) throw new GuestFsError(this.volume, dir.path, `${where}: index entries run past the node without a last entry`);
        const len = node.readUInt16LE(o + 8);
        const keyLen = node.readUInt16LE(o + 10);
        const flags = node.readUInt32LE(o + 12);
        if (len < 16 || o + len > used || 16 + keyLen > len) throw new GuestFsError(this.volume, dir.path, `${where}: index entry at byte ${o} of length ${len} does not fit`);
        if (flags & 1) {
          if (len < 24) throw new GuestFsError(this.volume, dir.path, `${where}: index entry with a child but no room for its VCN`);
          children.push(Number(node.readBigUInt64LE(o + len - 8)));
        }
        if (flags & 2) break;
        if (keyLen < 66) throw new GuestFsError(this.volume, dir.path, `${where}: index entry with a key of ${keyLen} bytes`);
        const key = node.subarray(o + 16, o + 16 + keyLen);
        const nameLen = key[64];
        if (66 + nameLen * 2 > keyLen) throw new GuestFsError(this.volume, dir.path, `${where}: file name of ${nameLen} characters longer than its key`);
        // DOS names duplicate a Win32 one; the root lists itself as ".".
        const name = key.toString('utf16le', 66, 66 + nameLen * 2);
        if (key[65] !== 2 && name !== '.') found.push({ record: Number(node.readBigUInt64LE(o) & 0xffffffffffffn), name, key: Buffer.from(key) });
        o += len;
      }
      return children;
    };
    let pending = take(root.value, 16, '$I30 index root');
    if (pending.length) {
      const alloc = attrs.filter((a) => a.type === ATTR_INDEX_ALLOCATION && a.name === '$I30').sort((a, b) => a.firstVcn - b.firstVcn);
      if (alloc.length === 0) throw new GuestFsError(this.volume, dir.path, 'index root has children but there is no $I30 index allocation');
      const runs = alloc.flatMap((a) => a.runs);
      const visited = new Set<number>();
      while (pending.length) {
        const vcn = pending.shift()!;
        if (visited.has(vcn)) throw new GuestFsError(this.volume, dir.path, `$I30 index loops: the node at VCN ${vcn} is reached twice`);
        if (visited.size >= MAX_INDEX_RECORDS) throw new GuestFsError(this.volume, dir.path, `$I30 index of more than ${MAX_INDEX_RECORDS} nodes`);
        visited.add(vcn);
        const buf = await this.readRuns(runs, vcn * this.clusterSize, this.indexRecordSize, dir.path, '$I30 index allocation');
        const where = `$I30 index record at VCN ${vcn}`;
        if (buf.toString('latin1', 0, 4) !== 'INDX') throw new GuestFsError(this.volume, dir.path, `${where}: no INDX magic`);
        this.fixup(buf, dir.path, where);
        pending = pending.concat(take(buf, 24, where));
      }
    }
    const base = dir.path === '/' ? '' : dir.path;
    const out: GuestEntry[] = [];
    for (const f of found) {
      const path = `${base}/${f.name}`;
      try {
        out.push(await this.entryOf(f.record, f.name, path));
      } catch (err) {
        if (!(err instanceof GuestFsError)) throw err;
        // One damaged record does not hide its folder: the entry is listed from its index key, marked.
        out.push({
          name: f.name, path, id: f.record, links: 1, type: f.key.readUInt32LE(56) & 0x10000000 ? 'dir' : 'file', size: Number(f.key.readBigUInt64LE(48)),
          mtime: filetime(f.key, 16), unreadable: err.defect,
        });
      }
    }
    return out;
  }

  async *content(file: GuestEntry): AsyncGenerator<Buffer> {
    const rec = await this.record(file.id, file.path);
    if (rec.flags & 2) throw new GuestFsError(this.volume, file.path, 'not a file');
    const data = (await this.attributes(rec, file.path)).filter((a) => a.type === ATTR_DATA && a.name === '').sort((a, b) => a.firstVcn - b.firstVcn);
    if (data.length === 0) return; // no $DATA: an empty file
    const why = this.unreadable(data[0]);
    if (why) throw new GuestFsError(this.volume, file.path, `file is ${why}; its data is not read by this reader (ntfs-3g reads it from a mounted volume)`);
    const first = data[0];
    if (first.resident) {
      yield Buffer.from(first.value!);
      return;
    }
    const runs = data.flatMap((a) => a.runs);
    const size = first.dataSize;
    const initialized = Math.min(first.initializedSize, size);
    const self = this;
    function* pieces(): Generator<() => Promise<Buffer>> {
      for (let pos = 0; pos < size; pos += PIECE) {
        const at = pos;
        const n = Math.min(PIECE, size - at);
        if (at >= initialized) yield async () => Buffer.alloc(n);
        else {
          const live = Math.min(n, initialized - at);
          yield async () => {
            const b = await self.readRuns(runs, at, live, file.path, '$DATA');
            return live === n ? b : Buffer.concat([b, Buffer.alloc(n - live)]);
          };
        }
      }
    }
    yield* readAhead(pieces());
  }

  private unreadable(a: Attribute): string | undefined {
    if (a.flags & FLAG_ENCRYPTED) return 'encrypted (EFS)';
    // Sparse attributes carry a compression unit too: only the flag says compressed.
    if (a.flags & FLAG_COMPRESSED) return 'compressed (NTFS LZNT1)';
    return undefined;
  }

  private async entryOf(n: number, name: string, path: string): Promise<GuestEntry> {
    const rec = await this.record(n, path);
    const attrs = await this.attributes(rec, path);
    const si = attrs.find((a) => a.type === ATTR_STANDARD_INFORMATION && a.resident && a.value && a.value.length >= 48);
    const names = attrs.filter((a) => a.type === ATTR_FILE_NAME && a.resident && a.value && a.value.length >= 66 && a.value[65] !== 2);
    const data = attrs.filter((a) => a.type === ATTR_DATA && a.name === '').sort((a, b) => a.firstVcn - b.firstVcn);
    const isDir = (rec.flags & 2) !== 0;
    const size = isDir || data.length === 0 ? 0 : data[0].resident ? data[0].value!.length : data[0].dataSize;
    const attrFlags = si ? si.value!.readUInt32LE(32) : 0;
    const e: GuestEntry = {
      name, path, size, id: n,
      type: isDir ? 'dir' : attrFlags & 0x400 ? 'symlink' : 'file',
      links: Math.max(1, names.length),
      created: si ? filetime(si.value!, 0) : undefined,
      mtime: si ? filetime(si.value!, 8) : undefined,
      ctime: si ? filetime(si.value!, 16) : undefined,
      atime: si ? filetime(si.value!, 24) : undefined,
    };
    if (!isDir && data.length) e.unreadable = this.unreadable(data[0]);
    return e;
  }

  /** An MFT record, fixups applied, attributes of this record only (see `attributes`). */
  private async record(n: number, path: string): Promise<MftRecord> {
    const cached = this.records.get(n);
    if (cached) return cached;
    const where = `MFT record ${n}`;
    const buf = await this.readRuns(this.mftRuns, n * this.recordSize, this.recordSize, path, '$MFT');
    if (buf.toString('latin1', 0, 4) !== 'FILE') throw new GuestFsError(this.volume, path, `${where}: no FILE magic (damaged or never used)`);
    this.fixup(buf, path, where);
    const flags = buf.readUInt16LE(22);
    if (!(flags & 1)) throw new GuestFsError(this.volume, path, `${where} is not in use (a stale directory entry)`);
    const used = Math.min(buf.readUInt32LE(24), this.recordSize);
    const attributes: Attribute[] = [];
    for (let o = buf.readUInt16LE(20); ; ) {
      if (o + 8 > used) throw new GuestFsError(this.volume, path, `${where}: attributes run past the ${used} bytes in use without an end marker`);
      const type = buf.readUInt32LE(o);
      if (type === 0xffffffff) break;
      const len = buf.readUInt32LE(o + 4);
      if (len < 24 || o + len > used || len % 8 !== 0) throw new GuestFsError(this.volume, path, `${where}: attribute 0x${type.toString(16)} at byte ${o} of length ${len} does not fit`);
      attributes.push(this.attribute(buf.subarray(o, o + len), path, `${where}, attribute 0x${type.toString(16)}`));
      o += len;
    }
    const rec: MftRecord = { number: n, flags, sequence: buf.readUInt16LE(16), attributes };
    if (this.records.size >= 4096) this.records.clear();
    this.records.set(n, rec);
    return rec;
  }

  private attribute(a: Buffer, path: string, where: string): Attribute {
    const bad = (d: string): never => {
      throw new GuestFsError(this.volume, path, `${where}: ${d}`);
    };
    const nameLen = a[9];
    const nameOff = a.readUInt16LE(10);
    if (nameOff + nameLen * 2 > a.length) bad('name runs past the attribute');
    const base = { type: a.readUInt32LE(0), name: a.toString('utf16le', nameOff, nameOff + nameLen * 2), flags: a.readUInt16LE(12) };
    if (a[8] === 0) {
      const len = a.readUInt32LE(16);
      const off = a.readUInt16LE(20);
      if (off + len > a.length) bad(`resident value of ${len} bytes at ${off} runs past the attribute`);
      return { ...base, resident: true, value: a.subarray(off, off + len), firstVcn: 0, lastVcn: 0, dataSize: len, initializedSize: len, compressionUnit: 0, runs: [] };
    }
    if (a.length < 64) bad('non-resident header truncated');
    const firstVcn = Number(a.readBigUInt64LE(16));
    const lastVcn = Number(a.readBigInt64LE(24));
    const dataSize = Number(a.readBigUInt64LE(48));
    if (!Number.isSafeInteger(dataSize) || dataSize > this.clusterCount * this.clusterSize * 2 ** 10) bad(`data size ${a.readBigUInt64LE(48)}`);
    return {
      ...base, resident: false, firstVcn, lastVcn, dataSize, initializedSize: Number(a.readBigUInt64LE(56)), compressionUnit: a.readUInt16LE(34),
      runs: this.runlist(a, a.readUInt16LE(32), firstVcn, lastVcn, bad),
    };
  }

  private runlist(a: Buffer, at: number, firstVcn: number, lastVcn: number, bad: (d: string) => never): Run[] {
    const runs: Run[] = [];
    let vcn = firstVcn;
    let lcn = 0;
    for (let o = at; ; ) {
      if (o >= a.length) bad('runlist runs past the attribute');
      const h = a[o];
      if (h === 0) break;
      const lenBytes = h & 15;
      const offBytes = h >> 4;
      if (lenBytes === 0 || lenBytes > 8 || offBytes > 8 || o + 1 + lenBytes + offBytes > a.length) bad(`runlist header 0x${h.toString(16)} at byte ${o}`);
      const length = Number(a.readUIntLE(o + 1, Math.min(6, lenBytes))) + (lenBytes > 6 ? a.readUIntLE(o + 7, lenBytes - 6) * 2 ** 48 : 0);
      if (length <= 0 || !Number.isSafeInteger(length)) bad(`run of ${length} clusters`);
      let lcnOut: number | undefined;
      if (offBytes) {
        const delta = offBytes > 6 ? Number(BigInt.asIntN(offBytes * 8, BigInt('0x' + a.subarray(o + 1 + lenBytes, o + 1 + lenBytes + offBytes).reverse().toString('hex')))) : a.readIntLE(o + 1 + lenBytes, offBytes);
        lcn += delta;
        if (lcn < 0 || lcn + length > this.clusterCount) bad(`run of ${length} clusters at cluster ${lcn} lies outside the volume's ${this.clusterCount} clusters`);
        lcnOut = lcn;
      }
      runs.push({ vcn, length, lcn: lcnOut });
      if (runs.length > MAX_RUNS) bad(`more than ${MAX_RUNS} runs`);
      vcn += length;
      o += 1 + lenBytes + offBytes;
    }
    if (runs.length && vcn - 1 !== lastVcn && lastVcn >= firstVcn) bad(`runlist covers VCNs ${firstVcn}..${vcn - 1}, the header says ..${lastVcn}`);
    return runs;
  }

  /** Attributes of a file across its base record and, through $ATTRIBUTE_LIST, its extension records. */
  private async attributes(rec: MftRecord, path: string): Promise<Attribute[]> {
    const list = rec.attributes.find((a) => a.type === ATTR_ATTRIBUTE_LIST);
    if (!list) return rec.attributes;
    let value = list.value;
    if (!list.resident) {
      if (list.dataSize > 16 * 1024 * 1024) throw new GuestFsError(this.volume, path, `MFT record ${rec.number}: attribute list of ${list.dataSize} bytes`);
      value = await this.readRuns(list.runs, 0, list.dataSize, path, '$ATTRIBUTE_LIST');
    }
    const others = new Set<number>();
    for (let o = 0; o + 26 <= value!.length; ) {
      const len = value!.readUInt16LE(o + 4);
      if (len < 26) throw new GuestFsError(this.volume, path, `MFT record ${rec.number}: attribute list entry of ${len} bytes`);
      const ref = Number(value!.readBigUInt64LE(o + 16) & 0xffffffffffffn);
      if (ref !== rec.number) others.add(ref);
      if (others.size > MAX_EXTENSION_RECORDS) throw new GuestFsError(this.volume, path, `MFT record ${rec.number}: more than ${MAX_EXTENSION_RECORDS} extension records`);
      o += len;
    }
    const out = rec.attributes.filter((a) => a.type !== ATTR_ATTRIBUTE_LIST);
    for (const n of others) {
      const ext = await this.record(n, path);
      out.push(...ext.attributes.filter((a) => a.type !== ATTR_ATTRIBUTE_LIST));
    }
    return out;
  }

  private fixup(buf: Buffer, path: string, where: string): void {
    const off = buf.readUInt16LE(4);
    const count = buf.readUInt16LE(6);
    if (count < 2 || count - 1 !== buf.length / 512 || off + count * 2 > buf.length) throw new GuestFsError(this.volume, path, `${where}: update sequence of ${count} entries at ${off} for ${buf.length} bytes`);
    const usn = buf.readUInt16LE(off);
    for (let i = 1; i < count; i++) {
      const end = i * 512 - 2;
      if (buf.readUInt16LE(end) !== usn) throw new GuestFsError(this.volume, path, `${where}: damaged (update sequence mismatch in sector ${i - 1}: a torn write)`);
      buf.writeUInt16LE(buf.readUInt16LE(off + i * 2), end);
    }
  }

  /** `length` bytes at byte `pos` of a non-resident attribute; sparse runs read as zeros. */
  private async readRuns(runs: Run[], pos: number, length: number, path: string, what: string): Promise<Buffer> {
    const out = Buffer.alloc(length);
    let done = 0;
    let i = 0;
    const cs = this.clusterSize;
    // Runs are sorted by VCN: skip to the one holding `pos` by binary search.
    for (let lo = 0, hi = runs.length - 1; lo <= hi; ) {
      const mid = (lo + hi) >> 1;
      if ((runs[mid].vcn + runs[mid].length) * cs <= pos) lo = i = mid + 1;
      else hi = mid - 1;
    }
    for (; done < length; i++) {
      const r = runs[i];
      const at = pos + done;
      if (!r || r.vcn * cs > at) throw new GuestFsError(this.volume, path, `${what}: byte ${at} is not mapped by any run`);
      const inRun = at - r.vcn * cs;
      const n = Math.min(length - done, r.length * cs - inRun);
      if (r.lcn !== undefined) (await this.dev.read(r.lcn * cs + inRun, n)).copy(out, done);
      done += n;
    }
    return out;
  }
}
