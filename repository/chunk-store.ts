// The chunk store: content-addressed chunk files under chunks/, named by the SHA-256 of the
// plaintext, fanned out by the first three hex digits (4096 folders, made when the repository
// is created: ~2,500 files per folder at 10 million chunks).
//
// Stored chunk file (all integers little-endian):
//   offset size
//   0      4    magic "HVC1"
//   4      1    codec: 0 none, 1 zstd; | 0x80 when the payload is sealed (AES-256-GCM, encryption.ts)
//   5      3    reserved, zero
//   8      4    raw (plaintext) length
//   12     4    stored payload length; file size is exactly 16 + this
//   16     n    payload (sealed: 12-byte nonce | ciphertext of the compressed payload | 16-byte tag)
// A reader checks magic, codec, file size, decoded length and finally the SHA-256 against the
// file name. All-zero chunks are never stored: an index holds 32 zero bytes for them.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ENCRYPTED_FLAG, decodeChunkPayload } from './codec';
import { open as openSealed, seal } from './encryption';
import { TEMP_MARK, syncFileSystem, tempNameFor } from './durable';
import { ChunkEncoder } from './encoder';
import type { EncodedChunk, StoreItem } from './encoder';
import { RepositoryError, isNotFound } from './errors';
import { checkDigest, isDigest } from './ids';

export const CHUNK_MAGIC = Buffer.from('HVC1', 'latin1');
export const CHUNK_HEADER_SIZE = 16;
/** Largest plaintext chunk the repository accepts (also the upload body limit). */
export const MAX_CHUNK_SIZE = 8 * 1024 * 1024;
/** New chunk bytes between two background syncfs calls (see ChunkStore.wrote). */
export const WRITE_BEHIND_BYTES = 256 * 1024 * 1024;
export { ZERO_DIGEST, isAllZero } from './zero';

export function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}


/** Decodes and checks a stored chunk; throws CORRUPT naming the file and what was wrong. */
export function decodeChunkFile(file: Buffer, digest: string, where: string, chunkKey?: Buffer): Buffer {
  const bad = (what: string) => new RepositoryError('CORRUPT', `chunk ${where}: ${what}`, 'run verify; restore from another point or re-run a consistency check backup', { digest });
  if (file.length < CHUNK_HEADER_SIZE) throw bad(`file too short (${file.length} bytes)`);
  if (!file.subarray(0, 4).equals(CHUNK_MAGIC)) throw bad('bad magic');
  const codec = file.readUInt8(4);
  const rawLength = file.readUInt32LE(8);
  const storedLength = file.readUInt32LE(12);
  if (file.length !== CHUNK_HEADER_SIZE + storedLength) {
    throw bad(`size ${file.length} does not match header (${CHUNK_HEADER_SIZE + storedLength})`);
  }
  if (rawLength === 0 || rawLength > MAX_CHUNK_SIZE) throw bad(`header claims ${rawLength} bytes, a chunk is 1..${MAX_CHUNK_SIZE}`);
  let payload = file.subarray(CHUNK_HEADER_SIZE);
  if (codec & ENCRYPTED_FLAG) {
    if (!chunkKey) throw new RepositoryError('CONFLICT', `chunk ${where} is encrypted and no key was given`, 'open the repository with its key file (--encryption-key-file)', { digest });
    try {
      payload = openSealed(chunkKey, file.subarray(0, 12), digest, payload);
    } catch (err) {
      throw bad((err as Error).message);
    }
  }
  let raw: Buffer;
  try {
    raw = decodeChunkPayload(codec & ~ENCRYPTED_FLAG, payload, rawLength);
  } catch (err) {
    throw bad(`cannot decode: ${(err as Error).message}`);
  }
  if (raw.length !== rawLength) throw bad(`decoded ${raw.length} bytes, header says ${rawLength}`);
  if (sha256(raw).toString('hex') !== digest) throw bad('SHA-256 of the content does not match its name');
  return raw;
}

/** Checks a chunk body against its claimed digest and the size limit (throws INVALID_ARGUMENT). */
export function checkChunk(digest: string, raw: Buffer): void {
  checkDigest(digest);
  if (raw.length === 0 || raw.length > MAX_CHUNK_SIZE) {
    throw new RepositoryError('INVALID_ARGUMENT', `chunk of ${raw.length} bytes`, `a chunk is 1..${MAX_CHUNK_SIZE} bytes`);
  }
  const actual = sha256(raw).toString('hex');
  if (actual !== digest) {
    throw new RepositoryError('INVALID_ARGUMENT', `digest mismatch: body hashes to ${actual}, not ${digest}`, 'send the chunk under the SHA-256 of its bytes', { digest, actual });
  }
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

  constructor(
    root: string,
    private readonly encoder: ChunkEncoder = new ChunkEncoder(0),
    /** The AES-256-GCM subkey: new chunks are sealed with it; sealed chunks need it to be read. */
    private readonly chunkKey?: Buffer,
    /** Bytes of new chunk files after which a background syncfs starts; 0 = never. */
    private readonly writeBehindBytes = WRITE_BEHIND_BYTES,
  ) {
    this.dir = path.join(root, 'chunks');
  }

  /**
   * Write-behind: every `writeBehindBytes` of new chunk files, one background syncfs (never two
   * at once) pushes them to the disk while the upload goes on, so the syncfs a commit must wait
   * for only has the tail left. Measured on the 4 GiB benchmark: the commit's syncfs went from
   * ~1.2 s (2 GB dirty) to ~0.2 s. Durability still comes only from the commit's own syncfs; a
   * failed background one is ignored (the commit's reports the error).
   */
  private unsyncedBytes = 0;
  private writeBehind: Promise<void> | undefined;
  private wrote(bytes: number): void {
    if (this.writeBehindBytes <= 0) return;
    this.unsyncedBytes += bytes;
    if (this.unsyncedBytes < this.writeBehindBytes || this.writeBehind) return;
    this.unsyncedBytes = 0;
    this.writeBehind = syncFileSystem(this.dir).catch(() => undefined).finally(() => (this.writeBehind = undefined));
  }

  /**
   * Chunks this process wrote or checked lately, with their stored size: a session's index
   * patch refers to chunks it has just uploaded, and these need no more file system calls.
   * Safe because GC only removes chunks older than the oldest live session (and drops them here).
   */
  private readonly recent = new Map<string, { size: number; at: number }>();
  private static readonly RECENT_MAX = 200_000;

  private remember(digest: string, size: number): void {
    if (this.recent.size >= ChunkStore.RECENT_MAX) this.recent.clear();
    this.recent.set(digest, { size, at: Date.now() });
  }

  /** Creates the 4096 fan-out folders up front (PBS does the same), off the ingest path. */
  async createFolders(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true });
    const names = Array.from({ length: 4096 }, (_, i) => i.toString(16).padStart(3, '0'));
    for (let i = 0; i < names.length; i += 128) {
      await Promise.all(names.slice(i, i + 128).map((n) => fs.mkdir(path.join(this.dir, n)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      })));
    }
  }

  pathOf(digest: string): string {
    return path.join(this.dir, digest.slice(0, 3), digest);
  }

  /**
   * touch() without a system call for a chunk this process wrote or touched at or after
   * `notBefore` (a session's start): its mtime is already past that session's GC cutoff.
   */
  async touchRecent(digest: string, notBefore: number): Promise<number | undefined> {
    const r = this.recent.get(digest);
    if (r === undefined || r.at < notBefore || this.deleting.has(digest)) return this.touch(digest);
    this.protectedDuringGc?.add(digest);
    return r.size;
  }

  /**
   * The GC coordination of every use of a chunk: waits for its unlink in flight, shields it from a
   * running GC. With no unlink in flight the shield is put up at once, in the caller's turn: an
   * await between the check and the shield let a GC decide to unlink the chunk in between while
   * the caller went on to find the file still there (a backup then named a chunk that was gone,
   * and its commit was refused; seen in the concurrent backups-and-GC test).
   */
  private claim(digest: string): Promise<void> | undefined {
    const unlinking = this.deleting.get(digest);
    if (unlinking === undefined) {
      this.protectedDuringGc?.add(digest);
      return undefined;
    }
    return unlinking.then(() => {
      this.protectedDuringGc?.add(digest);
    });
  }

  /** claim() for many chunks: one promise for the batch, and only when an unlink is in flight. */
  private claimMany(digests: readonly string[]): Promise<void> | undefined {
    let waits: Array<Promise<void>> | undefined;
    for (const d of digests) {
      const wait = this.claim(d);
      if (wait) (waits ??= []).push(wait);
    }
    return waits && Promise.all(waits).then(() => undefined);
  }

  /**
   * Marks the chunk as in use now: waits for a GC unlink in flight, shields it from the running
   * GC, and bumps its mtime (GC spares chunks newer than its cutoff). Returns the stored size,
   * or undefined when the chunk is not there.
   */
  async touch(digest: string): Promise<number | undefined> {
    await this.claim(digest);
    const file = this.pathOf(digest);
    try {
      const now = new Date();
      await fs.utimes(file, now, now);
      const st = await fs.stat(file);
      if (st.size <= CHUNK_HEADER_SIZE) return undefined;
      this.remember(digest, st.size);
      return st.size;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /**
   * touch() for many chunks: the ones not stored. The GC coordination runs here; the stat and
   * utimes of the whole list run on an encoder thread (a promise, a thread-pool round trip and,
   * for a new chunk, an exception per digest were a large share of the event loop's ingest work).
   */
  async missing(digests: string[]): Promise<string[]> {
    const unique = [...new Set(digests)];
    const out: string[] = [];
    if (!this.encoder.threaded) {
      let next = 0;
      await Promise.all(Array.from({ length: 16 }, async () => {
        while (next < unique.length) {
          const d = unique[next++];
          if ((await this.touch(d)) === undefined) out.push(d);
        }
      }));
      return out;
    }
    await this.claimMany(unique);
    const sizes = await this.encoder.touchAll(this.dir, unique);
    unique.forEach((d, i) => {
      if (sizes[i] > 0) this.remember(d, sizes[i]);
      else out.push(d);
    });
    return out;
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
    return this.insertEncoded(await this.encode(digest, raw));
  }

  /**
   * Hashes and compresses (on the encoder threads) and checks the digest and size; nothing is
   * stored yet, so a batch can be checked whole before any of it is written.
   */
  async encode(digest: string, raw: Buffer): Promise<EncodedChunk> {
    checkDigest(digest);
    if (raw.length === 0 || raw.length > MAX_CHUNK_SIZE) {
      throw new RepositoryError('INVALID_ARGUMENT', `chunk of ${raw.length} bytes`, `a chunk is 1..${MAX_CHUNK_SIZE} bytes`);
    }
    const e = await this.encoder.encode(raw);
    if (e.digest !== digest) {
      throw new RepositoryError('INVALID_ARGUMENT', `digest mismatch: body hashes to ${e.digest}, not ${digest}`, 'send the chunk under the SHA-256 of its bytes', { digest, actual: e.digest });
    }
    return e;
  }

  /**
   * Stores several chunks that are slices of one request body; every digest is checked before
   * any chunk is written. With encoder threads the whole job (hash, compress, write) runs on a
   * worker and `body` is handed over to it: do not use it afterwards.
   */
  async insertBatch(body: Buffer, items: StoreItem[]): Promise<ChunkInsertResult[]> {
    for (const it of items) {
      checkDigest(it.digest);
      if (it.length === 0 || it.length > MAX_CHUNK_SIZE) {
        throw new RepositoryError('INVALID_ARGUMENT', `chunk ${it.digest} of ${it.length} bytes`, `a chunk is 1..${MAX_CHUNK_SIZE} bytes`);
      }
    }
    if (!this.encoder.threaded) {
      const encoded = [];
      for (const it of items) encoded.push(await this.encode(it.digest, body.subarray(it.offset, it.offset + it.length)));
      const out: ChunkInsertResult[] = [];
      for (const e of encoded) out.push(await this.insertEncoded(e));
      return out;
    }
    await this.claimMany(items.map((it) => it.digest));
    const reply = await this.encoder.storeBatch(body, items, this.dir, `${process.pid.toString(36)}-${(this.batchCounter++).toString(36)}`);
    if ('mismatch' in reply) {
      const { digest, actual } = reply.mismatch;
      throw new RepositoryError('INVALID_ARGUMENT', `digest mismatch: body hashes to ${actual}, not ${digest}`, 'send the chunk under the SHA-256 of its bytes', { digest, actual });
    }
    reply.results.forEach((r, i) => {
      if (r.storedSize > 0) this.remember(items[i].digest, r.storedSize);
      if (r.written) this.wrote(r.storedSize);
    });
    return reply.results;
  }
  private batchCounter = 0;

  /** Stores a chunk from encode(). */
  async insertEncoded(e: EncodedChunk): Promise<ChunkInsertResult> {
    const digest = e.digest;
    if (e.allZero) return { written: false, storedSize: 0 };
    const existing = await this.touch(digest);
    if (existing !== undefined) return { written: false, storedSize: existing };
    const file = this.pathOf(digest);
    const dir = path.dirname(file);
    if (!this.createdDirs.has(dir)) {
      await fs.mkdir(dir, { recursive: true });
      this.createdDirs.add(dir);
    }
    const header = Buffer.alloc(CHUNK_HEADER_SIZE);
    CHUNK_MAGIC.copy(header, 0);
    header.writeUInt8(this.chunkKey ? e.codec | ENCRYPTED_FLAG : e.codec, 4);
    header.writeUInt32LE(e.rawLength, 8);
    const payload = this.chunkKey ? seal(this.chunkKey, header.subarray(0, 12), digest, e.payload) : e.payload;
    header.writeUInt32LE(payload.length, 12);
    const encoded = [header, payload];
    const tmp = tempNameFor(file);
    // Durability comes from the syncfs at commit, before any manifest can reference this chunk.
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(tmp, 'wx', 0o640);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      await fs.mkdir(dir, { recursive: true }); // the fan-out folder was removed under us
      fh = await fs.open(tmp, 'wx', 0o640);
    }
    try {
      const { bytesWritten } = await fh.writev(encoded);
      if (bytesWritten !== encoded[0].length + encoded[1].length) {
        throw Object.assign(new Error(`short write of ${tmp} (${bytesWritten} bytes): no space left on device`), { code: 'ENOSPC' });
      }
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fs.rm(tmp, { force: true }); // a torn temp file must not hold the space it could not fill
      throw err;
    }
    await fh.close();
    await fs.rename(tmp, file);
    const storedSize = encoded[0].length + encoded[1].length;
    this.remember(digest, storedSize);
    this.wrote(storedSize);
    return { written: true, storedSize };
  }

  /**
   * Several chunks as stored (readStored's form), each after its 32-byte digest, in one buffer
   * read straight into its place: no buffer per chunk, no copy (the storage API's batched read).
   * A sealed chunk is opened on the way. Refuses with INVALID_ARGUMENT past `maxBytes`. `alloc`
   * gives the buffer (the storage API reuses its responses' memory: a fresh one per batch costs
   * page faults and external-memory GCs).
   */
  async readStoredRecords(digests: string[], maxBytes: number, alloc: (size: number) => Buffer = Buffer.allocUnsafe): Promise<Buffer> {
    const cap = CHUNK_HEADER_SIZE + MAX_CHUNK_SIZE + 64;
    const handles: Array<{ fh: fs.FileHandle; size: number } | undefined> = new Array(digests.length);
    try {
      let next = 0;
      const opened = async () => {
        while (next < digests.length) {
          const i = next++;
          const file = this.pathOf(checkDigest(digests[i]));
          let fh: fs.FileHandle;
          try {
            fh = await fs.open(file, 'r');
          } catch (err) {
            if (isNotFound(err)) throw new RepositoryError('NOT_FOUND', `chunk ${digests[i]} is missing`, 'run verify to see which recovery points are affected', { digest: digests[i] });
            throw err;
          }
          handles[i] = { fh, size: 0 };
          handles[i]!.size = (await fh.stat()).size;
          if (handles[i]!.size > cap) throw new RepositoryError('CORRUPT', `chunk ${file}: file of ${handles[i]!.size} bytes is larger than any chunk`, 'run verify; restore from another point or re-run a consistency check backup', { digest: digests[i] });
        }
      };
      await Promise.all(Array.from({ length: Math.min(16, digests.length) }, opened));
      const total = handles.reduce((a, h) => a + 32 + h!.size, 0);
      if (total > maxBytes) throw new RepositoryError('INVALID_ARGUMENT', `${digests.length} chunks come to ${total} bytes, more than ${maxBytes}`, 'ask for fewer chunks per request');
      const out = alloc(total);
      const at: number[] = [];
      for (let i = 0, o = 0; i < digests.length; o += 32 + handles[i]!.size, i++) at.push(o);
      next = 0;
      const sealed: number[] = [];
      await Promise.all(Array.from({ length: Math.min(16, digests.length) }, async () => {
        while (next < digests.length) {
          const i = next++;
          const { fh, size } = handles[i]!;
          out.write(digests[i], at[i], 32, 'hex');
          const { bytesRead } = await fh.read(out, at[i] + 32, size, 0);
          const rec = out.subarray(at[i] + 32, at[i] + 32 + size);
          const bad = (what: string) => new RepositoryError('CORRUPT', `chunk ${this.pathOf(digests[i])}: ${what}`, 'run verify; restore from another point or re-run a consistency check backup', { digest: digests[i] });
          if (bytesRead !== size || size < CHUNK_HEADER_SIZE || !rec.subarray(0, 4).equals(CHUNK_MAGIC)) throw bad('bad magic, too short or changed while read');
          if (size !== CHUNK_HEADER_SIZE + rec.readUInt32LE(12)) throw bad(`size ${size} does not match header`);
          if (rec.readUInt8(4) & ENCRYPTED_FLAG) sealed.push(i);
        }
      }));
      if (!sealed.length) return out;
      // Sealed chunks: each record rebuilt unsealed (shorter by the seal), the rest as read.
      const parts: Buffer[] = [];
      for (let i = 0; i < digests.length; i++) {
        const rec = out.subarray(at[i], at[i] + 32 + handles[i]!.size);
        parts.push(sealed.includes(i) ? Buffer.concat([rec.subarray(0, 32), this.unseal(digests[i], rec.subarray(32))]) : rec);
      }
      return Buffer.concat(parts);
    } finally {
      await Promise.all(handles.map((h) => h?.fh.close().catch(() => undefined)));
    }
  }

  private unseal(digest: string, data: Buffer): Buffer {
    const file = this.pathOf(digest);
    if (!this.chunkKey) throw new RepositoryError('CONFLICT', `chunk ${file} is encrypted and no key was given`, 'open the repository with its key file (--encryption-key-file)', { digest });
    let payload: Buffer;
    try {
      payload = openSealed(this.chunkKey, data.subarray(0, 12), digest, data.subarray(CHUNK_HEADER_SIZE));
    } catch (err) {
      throw new RepositoryError('CORRUPT', `chunk ${file}: ${(err as Error).message}`, 'run verify; restore from another point or re-run a consistency check backup', { digest });
    }
    const header = Buffer.from(data.subarray(0, CHUNK_HEADER_SIZE));
    header.writeUInt8(header.readUInt8(4) & ~ENCRYPTED_FLAG, 4);
    header.writeUInt32LE(payload.length, 12);
    return Buffer.concat([header, payload]);
  }

  /** Reads, decodes and checks one chunk; the all-zero digest is not a stored chunk. */
  async read(digest: string): Promise<Buffer> {
    const file = this.pathOf(digest);
    let data: Buffer;
    try {
      // A chunk file is at most a chunk plus header and seal: a larger one is damage, not read.
      const st = await fs.stat(file);
      if (st.size > CHUNK_HEADER_SIZE + MAX_CHUNK_SIZE + 64) {
        throw new RepositoryError('CORRUPT', `chunk ${file}: file of ${st.size} bytes is larger than any chunk`, 'run verify; restore from another point or re-run a consistency check backup', { digest });
      }
      data = await fs.readFile(file);
    } catch (err) {
      if (isNotFound(err)) {
        throw new RepositoryError('NOT_FOUND', `chunk ${digest} is missing`, 'run verify to see which recovery points are affected', { digest });
      }
      throw err;
    }
    return decodeChunkFile(data, digest, file, this.chunkKey);
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
    this.recent.delete(digest);
    const p = fs.rm(this.pathOf(digest), { force: true });
    this.deleting.set(digest, p);
    try {
      await p;
    } finally {
      this.deleting.delete(digest);
    }
    return true;
  }

  /** Lists chunk files whose 16-bit digest prefix is in [from, to) (ranges are multiples of 16). */
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
      if (!/^[0-9a-f]{3}$/.test(d)) continue;
      const p = parseInt(d, 16) << 4;
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
