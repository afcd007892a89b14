// Chunk work off the event loop: a small pool of worker threads that hash and compress single
// chunks (`encode`) or check and store whole upload batches (`storeBatch`: hash all, then
// compress and write each new chunk as temp file + rename, touch the existing ones), so the
// storage API keeps receiving while chunks are processed and the server uses the cores it is
// given. The worker is plain JavaScript (eval) so it runs the same from dist/ and under jest;
// it writes the chunk file format documented in chunk-store.ts.
import { cpus } from 'node:os';
import { Worker } from 'node:worker_threads';
import { CODEC_NONE, CODEC_ZSTD, ENCRYPTED_FLAG, ZSTD_LEVEL, encodeChunkPayload } from './codec';
import type { Codec } from './codec';
import { createHash } from 'node:crypto';
import { TEMP_MARK } from './durable';
import { bodyPool } from './buffer-pool';

export interface EncodedChunk {
  digest: string;
  rawLength: number;
  allZero: boolean;
  codec: Codec;
  /** Stored payload; empty for an all-zero chunk. */
  payload: Buffer;
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash, createCipheriv, randomBytes } = require('node:crypto');
const { compress } = require(workerData.zstdPath);
const zstd = require(workerData.zstdBindingPath);
const cctx = new zstd.CCtx();
const BLOCK = 4096;
const roundUp = (n) => Math.ceil(n / BLOCK) * BLOCK;
// New chunk files of a batch are laid out one after another in a reused arena, each at a
// 4096-byte boundary as [16-byte header | payload | zero padding]: zstd compresses straight into
// its place and the file is written from there. One arena per worker, never freed: a fresh
// ~256 KiB output per chunk was a fresh mmap and 64 page faults each (~1M faults per 4 GiB).
// The arena is a WebAssembly memory because that is page aligned, which O_DIRECT needs.
let memory;
function arenaOf(n) {
  const pages = Math.ceil(n / 65536);
  if (!memory) memory = new WebAssembly.Memory({ initial: pages });
  else if (memory.buffer.byteLength < n) memory.grow(pages - memory.buffer.byteLength / 65536);
  return Buffer.from(memory.buffer, 0, n);
}
const chunkKey = workerData.chunkKey ? Buffer.from(workerData.chunkKey) : undefined;
// AES-256-GCM seal as in encryption.ts: nonce | ciphertext | tag; AAD = header[0..12] | digest.
function seal(header, digest, payload) {
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', chunkKey, nonce);
  c.setAAD(Buffer.concat([header.subarray(0, 12), Buffer.from(digest, 'hex')]));
  const body = c.update(payload);
  const fin = c.final();
  return Buffer.concat([nonce, body, fin, c.getAuthTag()]);
}
const ZERO = Buffer.alloc(65536);
function isZero(b) {
  for (let o = 0; o < b.length; o += ZERO.length) {
    const e = Math.min(b.length, o + ZERO.length);
    if (b.compare(ZERO, 0, e - o, o, e) !== 0) return false;
  }
  return true;
}
const fs = require('node:fs');
const path = require('node:path');
// Direct I/O: chunk files are written with O_DIRECT, past the page cache. Chunk data is written
// once and read rarely (restores, verify), so caching it only evicts what is worth caching, and
// copying it into the page cache was the largest single cost of an ingest (see README).
// A file system without O_DIRECT (tmpfs) refuses it with EINVAL: buffered writes from then on.
// Only Linux has O_DIRECT (elsewhere the constant is undefined: buffered).
let direct = !!workerData.directWrites && fs.constants.O_DIRECT !== undefined;
// Pooled request bodies (buffer-pool.ts): shared memory this worker was sent once, by id. The
// pool never lets go of memory it made, so nothing is ever forgotten here.
const shared = new Map();
// "store": hash each chunk of a batch and, while its bytes are still in the CPU cache, compress
// it if it is new; only when every digest matched (a bad batch stores nothing) write the new
// ones: temp file, rename. The request body is pooled shared memory (read here, given back to
// the pool by the main thread once this replies) or was handed over; never copied.
function store({ id, data, pool, items, dir, tmpTag }) {
  let body;
  if (pool) {
    if (pool.sab) shared.set(pool.id, pool.sab);
    const sab = shared.get(pool.id);
    if (!sab) throw new Error('pooled body ' + pool.id + ' was never sent to this worker');
    body = Buffer.from(sab, pool.offset, pool.length);
  } else body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let need = 0;
  for (const it of items) need += roundUp(16 + zstd.compressBound(it.length) + (chunkKey ? 28 : 0));
  const arena = arenaOf(need);
  let used = 0;
  const results = new Array(items.length);
  const pending = [];
  for (let i = 0; i < items.length; i++) {
    const raw = body.subarray(items[i].offset, items[i].offset + items[i].length);
    const digest = items[i].digest;
    const actual = createHash('sha256').update(raw).digest('hex');
    if (actual !== digest) return parentPort.postMessage({ id, mismatch: { digest, actual } });
    if (isZero(raw)) { results[i] = { written: false, storedSize: 0 }; continue; }
    const sub = path.join(dir, digest.slice(0, 3));
    const file = path.join(sub, digest);
    // Stored already (another session, a retry): its mtime bumped instead.
    const storedSize = touchStored(file, new Date());
    if (storedSize > 0) { results[i] = { written: false, storedSize }; continue; }
    const at = used;
    const header = arena.subarray(at, at + 16);
    const n = cctx.compress(arena.subarray(at + 16), raw, workerData.level);
    const useZ = n < raw.length;
    header.write('HVC1', 0, 'latin1');
    header.writeUInt32LE(0, 4); // codec byte and reserved bytes: the arena holds the last batch's bytes
    header.writeUInt8((useZ ? ${CODEC_ZSTD} : ${CODEC_NONE}) | (chunkKey ? ${ENCRYPTED_FLAG} : 0), 4);
    header.writeUInt32LE(raw.length, 8);
    let payload = useZ ? arena.subarray(at + 16, at + 16 + n) : raw;
    if (chunkKey) payload = seal(header, digest, payload);
    header.writeUInt32LE(payload.length, 12);
    if (payload.buffer !== arena.buffer || payload.byteOffset !== at + 16) payload.copy(arena, at + 16);
    const size = 16 + payload.length;
    const padded = roundUp(size);
    arena.fill(0, at + size, at + padded); // the block past the file's end must not carry another chunk's bytes
    used += padded;
    pending.push({ i, sub, file, image: arena.subarray(at, at + padded), size });
  }
  for (const { i, sub, file, image, size } of pending) {
    results[i] = { written: true, storedSize: writeChunkFile(file, sub, tmpTag + '-' + i, image, size) };
  }
  parentPort.postMessage({ id, results });
}

// Writes one chunk file: temp file (O_EXCL), the bytes, rename. "image" is the file's bytes padded
// to a 4096-byte multiple; size the file's real length.
function writeChunkFile(file, sub, tag, image, size) {
  const tmp = file + '${TEMP_MARK}' + tag;
  const open = () => {
    if (direct) {
      try {
        return { fd: fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_DIRECT, 0o640), viaDirect: true };
      } catch (err) {
        if (err.code !== 'EINVAL') throw err;
        direct = false;
      }
    }
    return { fd: fs.openSync(tmp, 'wx', 0o640), viaDirect: false };
  };
  let opened;
  try {
    opened = open();
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
    fs.mkdirSync(sub, { recursive: true }); // a repository made without its folders
    opened = open();
  }
  let { fd, viaDirect } = opened;
  try {
    let n;
    if (viaDirect) {
      try {
        n = fs.writeSync(fd, image, 0, image.length);
      } catch (err) {
        if (err.code !== 'EINVAL') throw err;
        // Opened, but this file system wants another alignment: buffered from now on.
        direct = false;
        fs.closeSync(fd);
        fd = fs.openSync(tmp, 'w', 0o640);
        viaDirect = false;
      }
      if (viaDirect && n === image.length) {
        fs.ftruncateSync(fd, size);
        n = size;
      }
    }
    if (!viaDirect) n = fs.writeSync(fd, image, 0, size);
    // A short write to a regular file means the volume is full.
    if (n !== size) throw Object.assign(new Error('short write of ' + tmp + ': no space left on device'), { code: 'ENOSPC' });
  } catch (err) {
    try { fs.closeSync(fd); } catch {}
    fd = undefined;
    try { fs.unlinkSync(tmp); } catch {}
    throw err;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  return size;
}
// A stored chunk (a file longer than its header) gets its mtime bumped (GC spares chunks newer
// than its cutoff) and its size returned; 0 when there is none. A stat that finds nothing
// returns undefined: no exception built per new chunk.
function touchStored(file, now) {
  const st = fs.statSync(file, { throwIfNoEntry: false });
  if (!st || st.size <= 16) return 0;
  try {
    fs.utimesSync(file, now, now);
  } catch (err) {
    if (err.code === 'ENOENT') return 0;
    throw err;
  }
  return st.size;
}
// "touch": the stored size of each of these chunks, 0 for a missing one.
function touchAll({ id, dir, digests }) {
  const now = new Date();
  parentPort.postMessage({ id, sizes: digests.map((d) => touchStored(path.join(dir, d.slice(0, 3), d), now)) });
}
parentPort.on('message', (m) => {
  if (m.op === 'touch') {
    try { return touchAll(m); } catch (err) { return parentPort.postMessage({ id: m.id, error: String(err && err.message || err), code: err && err.code }); }
  }
  if (m.op === 'store') {
    try { return store(m); } catch (err) { return parentPort.postMessage({ id: m.id, error: String(err && err.message || err), code: err && err.code }); }
  }
  const { id, data } = m;
  try {
    const raw = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const digest = createHash('sha256').update(raw).digest('hex');
    if (isZero(raw)) return parentPort.postMessage({ id, digest, allZero: true, codec: 0, payload: null });
    const z = compress(raw, { compressionLevel: workerData.level });
    if (z.length < raw.length) {
      const out = new Uint8Array(z.length);
      out.set(z);
      parentPort.postMessage({ id, digest, allZero: false, codec: ${CODEC_ZSTD}, payload: out }, [out.buffer]);
    }
    else parentPort.postMessage({ id, digest, allZero: false, codec: ${CODEC_NONE}, payload: null });
  } catch (err) {
    parentPort.postMessage({ id, error: String(err && err.message || err) });
  }
});
`;

interface Pending {
  raw?: Buffer;
  /** Pooled memory lent to the worker: given back to the pool when it replies. */
  lent?: SharedArrayBuffer;
  resolve: (e: EncodedChunk) => void;
  resolveStore?: (r: StoreReply) => void;
  resolveTouch?: (sizes: number[]) => void;
  reject: (err: Error) => void;
}

export interface StoreItem {
  digest: string;
  offset: number;
  length: number;
}

export type StoreReply =
  | { results: Array<{ written: boolean; storedSize: number }> }
  | { mismatch: { digest: string; actual: string } };

export class ChunkEncoder {
  private readonly workers: Worker[] = [];
  private readonly inFlight: number[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  /** Per worker, the ids of pooled memory it has been sent (and keeps). */
  private readonly sentPool: Array<Set<number>> = [];

  /**
   * threads = 0 encodes on the calling thread. Default: one per core, at least 2, at most 4
   * (measured on the shared 2-core machine, 1 GiB ingest: 2 threads 4.4-5.4 s, none 5.1-6.6 s,
   * for ~75 MB more server memory).
   */
  constructor(
    threads = Math.min(4, Math.max(2, cpus().length)),
    chunkKey?: Buffer,
    /** Write chunk files with O_DIRECT where the file system allows it (falls back by itself). */
    directWrites = true,
  ) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { directWrites, zstdPath: require.resolve('zstd-napi'), zstdBindingPath: require.resolve('zstd-napi/binding'), level: ZSTD_LEVEL, chunkKey: chunkKey ? new Uint8Array(chunkKey) : undefined } });
      w.unref();
      w.on('message', (m: { id: number; digest: string; allZero: boolean; codec: Codec; payload: Uint8Array | null; error?: string; code?: string; sizes?: number[] } & Partial<StoreReply>) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        this.inFlight[i]--;
        if (p.lent) bodyPool.give(p.lent); // the worker is done with the body
        if (m.error) return p.reject(Object.assign(new Error(`chunk encoder: ${m.error}`), m.code ? { code: m.code } : {}));
        if (p.resolveStore) return p.resolveStore(m as StoreReply);
        if (p.resolveTouch) return p.resolveTouch(m.sizes!);
        if (!p.raw) return;
        const payload = m.allZero ? Buffer.alloc(0) : m.payload ? Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength) : p.raw;
        p.resolve({ digest: m.digest, rawLength: p.raw.length, allZero: m.allZero, codec: m.codec, payload });
      });
      w.on('error', (err) => {
        for (const p of this.pending.values()) p.reject(err);
        this.pending.clear();
      });
      this.workers.push(w);
      this.inFlight.push(0);
      this.sentPool.push(new Set());
    }
  }

  /** The worker with the fewest jobs in flight. */
  private leastBusy(): number {
    let best = 0;
    for (let i = 1; i < this.workers.length; i++) if (this.inFlight[i] < this.inFlight[best]) best = i;
    return best;
  }

  encode(raw: Buffer): Promise<EncodedChunk> {
    if (this.workers.length === 0) return Promise.resolve(encodeHere(raw));
    const best = this.leastBusy();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { raw, resolve, reject });
      this.inFlight[best]++;
      // Cloning a Buffer view would copy its whole ArrayBuffer (often a 4 MiB request body):
      // copy just the chunk into a fresh one and hand it over.
      const data = new Uint8Array(raw.length);
      data.set(raw);
      this.workers[best].postMessage({ id, data }, [data.buffer]);
    });
  }

  /** True when chunks are stored by the worker threads (storeBatch may be used). */
  get threaded(): boolean {
    return this.workers.length > 0;
  }

  /**
   * Checks and stores a batch of chunks that are slices of one body, on a worker thread: the
   * body is handed over (no copy when it owns its memory; the caller must not use it after).
   */
  storeBatch(body: Buffer, items: StoreItem[], dir: string, tmpTag: string): Promise<StoreReply> {
    const best = this.leastBusy();
    const id = this.nextId++;
    const poolId = bodyPool.idOf(body.buffer);
    if (poolId !== undefined) {
      // Pooled memory: sent to this worker once, named by id after that; lent, not moved.
      const sab = body.buffer as SharedArrayBuffer;
      const first = !this.sentPool[best].has(poolId);
      this.sentPool[best].add(poolId);
      const pool = { id: poolId, offset: body.byteOffset, length: body.length, ...(first ? { sab } : {}) };
      return new Promise((resolve, reject) => {
        this.pending.set(id, { resolve: () => undefined, resolveStore: resolve, reject, lent: sab });
        this.inFlight[best]++;
        this.workers[best].postMessage({ op: 'store', id, pool, items, dir, tmpTag });
      });
    }
    let data: Uint8Array;
    if (body.byteOffset === 0 && body.buffer.byteLength === body.length && !(body.buffer instanceof SharedArrayBuffer)) {
      data = new Uint8Array(body.buffer, body.byteOffset, body.length);
    } else {
      data = new Uint8Array(body.length);
      data.set(body);
    }
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: () => undefined, resolveStore: resolve, reject });
      this.inFlight[best]++;
      this.workers[best].postMessage({ op: 'store', id, data, items, dir, tmpTag }, [data.buffer as ArrayBuffer]);
    });
  }

  /**
   * For each digest, the stored size of its chunk file under `dir` (0 when there is none), with
   * the mtime of every stored one bumped: stat and utimes on a worker thread, for a whole list.
   */
  touchAll(dir: string, digests: string[]): Promise<number[]> {
    const best = this.leastBusy();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: () => undefined, resolveTouch: resolve, reject });
      this.inFlight[best]++;
      this.workers[best].postMessage({ op: 'touch', id, dir, digests });
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers.length = 0;
  }
}

function encodeHere(raw: Buffer): EncodedChunk {
  const digest = createHash('sha256').update(raw).digest('hex');
  let allZero = true;
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] !== 0) {
      allZero = false;
      break;
    }
  }
  if (allZero) return { digest, rawLength: raw.length, allZero, codec: CODEC_NONE, payload: Buffer.alloc(0) };
  const { codec, payload } = encodeChunkPayload(raw);
  return { digest, rawLength: raw.length, allZero, codec, payload };
}
