// The chunk store: content-addressed chunk files under chunks/, named by the SHA-256 of the
// plaintext, fanned out by the first four hex digits (65536 folders, created on demand).
//
// Stored chunk file (all integers little-endian):
//   offset size
//   0      4    magic "HVC1"
//   4      1    codec: 0 none, 1 zstd
//   5      3    reserved, zero
//   8      4    raw (plaintext) length
//   12     4    stored payload length; file size is exactly 16 + this
//   16     n    payload
// A reader checks magic, codec, file size, decoded length and finally the SHA-256 against the
// file name. All-zero chunks are never stored: an index holds 32 zero bytes for them.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { decodeChunkPayload, encodeChunkPayload } from './codec';
import { TEMP_MARK, tempNameFor } from './durable';
import { RepositoryError, isNotFound } from './errors';
import { checkDigest, isDigest } from './ids';

export const CHUNK_MAGIC = Buffer.from('HVC1', 'latin1');
export const CHUNK_HEADER_SIZE = 16;
/** Largest plaintext chunk the repository accepts (also the upload body limit). */
export const MAX_CHUNK_SIZE = 8 * 1024 * 1024;
export const ZERO_DIGEST = Buffer.alloc(32);

export function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

export function isAllZero(buf: Buffer): boolean {
  // Compare in 64 KiB windows against one zero buffer: native memcmp speed, no allocation.
  for (let off = 0; off < buf.length; off += ZERO_WINDOW.length) {
    const end = Math.min(buf.length, off + ZERO_WINDOW.length);
    if (buf.compare(ZERO_WINDOW, 0, end - off, off, end) !== 0) return false;
  }
  return true;
}
const ZERO_WINDOW = Buffer.alloc(64 * 1024);

export function encodeChunkFile(raw: Buffer): Buffer {
  const { codec, payload } = encodeChunkPayload(raw);
  const header = Buffer.alloc(CHUNK_HEADER_SIZE);
  CHUNK_MAGIC.copy(header, 0);
  header.writeUInt8(codec, 4);
  header.writeUInt32LE(raw.length, 8);
  header.writeUInt32LE(payload.length, 12);
  return Buffer.concat([header, payload]);
}

/** Decodes and checks a stored chunk; throws CORRUPT naming the file and what was wrong. */
export function decodeChunkFile(file: Buffer, digest: string, where: string): Buffer {
  const bad = (what: string) => new RepositoryError('CORRUPT', `chunk ${where}: ${what}`, 'run verify; restore from another point or re-run a consistency check backup', { digest });
  if (file.length < CHUNK_HEADER_SIZE) throw bad(`file too short (${file.length} bytes)`);
  if (!file.subarray(0, 4).equals(CHUNK_MAGIC)) throw bad('bad magic');
  const codec = file.readUInt8(4);
  const rawLength = file.readUInt32LE(8);
  const storedLength = file.readUInt32LE(12);
  if (file.length !== CHUNK_HEADER_SIZE + storedLength) {
    throw bad(`size ${file.length} does not match header (${CHUNK_HEADER_SIZE + storedLength})`);
  }
  let raw: Buffer;
  try {
    raw = decodeChunkPayload(codec, file.subarray(CHUNK_HEADER_SIZE));
  } catch (err) {
    throw bad(`cannot decode: ${(err as Error).message}`);
  }
  if (raw.length !== rawLength) throw bad(`decoded ${raw.length} bytes, header says ${rawLength}`);
  if (sha256(raw).toString('hex') !== digest) throw bad('SHA-256 of the content does not match its name');
  return raw;
}

export interface ChunkInsertResult {
  /** false when the chunk was already there (deduplicated). */
  written: boolean;
  /** bytes of the stored file */
  storedSize: number;
}

export class ChunkStore {
  readonly dir: string;
  private readonly createdDirs = new Set<string>();
  /** GC coordination: digests being unlinked right now, and digests used while GC runs. */
  private readonly deleting = new Map<string, Promise<void>>();
  private protectedDuringGc: Set<string> | undefined;

  constructor(root: string) {
    this.dir = path.join(root, 'chunks');
  }

  pathOf(digest: string): string {
    return path.join(this.dir, digest.slice(0, 4), digest);
  }

  /**
   * Marks the chunk as in use now: waits for a GC unlink in flight, shields it from the running
   * GC, and bumps its mtime (GC spares chunks newer than its cutoff). Returns the stored size,
   * or undefined when the chunk is not there.
   */
  async touch(digest: string): Promise<number | undefined> {
    await this.deleting.get(digest);
    this.protectedDuringGc?.add(digest);
    const file = this.pathOf(digest);
    try {
      const now = new Date();
      await fs.utimes(file, now, now);
      const st = await fs.stat(file);
      return st.size > CHUNK_HEADER_SIZE ? st.size : undefined;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async storedSize(digest: string): Promise<number | undefined> {
    try {
      return (await fs.stat(this.pathOf(digest))).size;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Stores plaintext `raw` under `digest` after recomputing the digest. */
  async insert(digest: string, raw: Buffer): Promise<ChunkInsertResult> {
    checkDigest(digest);
    if (raw.length === 0 || raw.length > MAX_CHUNK_SIZE) {
      throw new RepositoryError('INVALID_ARGUMENT', `chunk of ${raw.length} bytes`, `a chunk is 1..${MAX_CHUNK_SIZE} bytes`);
    }
    const actual = sha256(raw).toString('hex');
    if (actual !== digest) {
      throw new RepositoryError('INVALID_ARGUMENT', `digest mismatch: body hashes to ${actual}, not ${digest}`, 'send the chunk under the SHA-256 of its bytes');
    }
    if (isAllZero(raw)) return { written: false, storedSize: 0 };
    const existing = await this.touch(digest);
    if (existing !== undefined) return { written: false, storedSize: existing };
    const file = this.pathOf(digest);
    const dir = path.dirname(file);
    if (!this.createdDirs.has(dir)) {
      await fs.mkdir(dir, { recursive: true });
      this.createdDirs.add(dir);
    }
    const encoded = encodeChunkFile(raw);
    const tmp = tempNameFor(file);
    // Durability comes from the syncfs at commit, before any manifest can reference this chunk.
    await fs.writeFile(tmp, encoded, { flag: 'wx', mode: 0o640 });
    await fs.rename(tmp, file);
    return { written: true, storedSize: encoded.length };
  }

  /** Reads, decodes and checks one chunk; the all-zero digest is not a stored chunk. */
  async read(digest: string): Promise<Buffer> {
    const file = this.pathOf(digest);
    let data: Buffer;
    try {
      data = await fs.readFile(file);
    } catch (err) {
      if (isNotFound(err)) {
        throw new RepositoryError('NOT_FOUND', `chunk ${digest} is missing`, 'run verify to see which recovery points are affected', { digest });
      }
      throw err;
    }
    return decodeChunkFile(data, digest, file);
  }

  // ---- garbage collection support -------------------------------------------------------

  beginGc(): void {
    this.protectedDuringGc = new Set();
  }

  endGc(): void {
    this.protectedDuringGc = undefined;
  }

  /** Unlinks unless the chunk was used since GC began; returns whether it was removed. */
  async removeIfUnused(digest: string): Promise<boolean> {
    if (this.protectedDuringGc?.has(digest) || this.deleting.has(digest)) return false;
    const p = fs.rm(this.pathOf(digest), { force: true });
    this.deleting.set(digest, p);
    try {
      await p;
    } finally {
      this.deleting.delete(digest);
    }
    return true;
  }

  /** Lists the fan-out folders in [from, to) by their 16-bit prefix value. */
  async *listPrefix(prefixFrom: number, prefixTo: number): AsyncGenerator<{ name: string; file: string; isTemp: boolean }> {
    let dirs: string[];
    try {
      dirs = await fs.readdir(this.dir);
    } catch (err) {
      if (isNotFound(err)) return;
      throw err;
    }
    dirs.sort();
    for (const d of dirs) {
      if (!/^[0-9a-f]{4}$/.test(d)) continue;
      const p = parseInt(d, 16);
      if (p < prefixFrom || p >= prefixTo) continue;
      const dir = await fs.opendir(path.join(this.dir, d)).catch((err) => {
        if (isNotFound(err)) return undefined;
        throw err;
      });
      if (!dir) continue;
      for await (const ent of dir) {
        const isTemp = ent.name.includes(TEMP_MARK);
        if (!isTemp && !isDigest(ent.name)) continue;
        yield { name: ent.name, file: path.join(this.dir, d, ent.name), isTemp };
      }
    }
  }
}
