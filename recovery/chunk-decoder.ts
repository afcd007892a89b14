// Decoding and checking chunks off the event loop: a small pool of worker threads that take a
// whole POST /chunks/read response (records of digest + stored chunk, storage-api/protocol.ts),
// check every record against the digest asked for, decompress it into exactly the length its
// header gives (never what the zstd frame claims), and hash it: a chunk is handed out only when
// the SHA-256 of its bytes is its digest. The response's memory is moved to the worker and back
// (a chunk stored uncompressed is handed out as a view of it), each decompressed chunk's moved
// back: nothing is copied across. Plain JavaScript (eval), as repository/encoder.ts, so
// it runs the same from dist/ and under jest.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { RepositoryError } from '../repository/errors';
import { MAX_CHUNK_SIZE } from '../repository/chunk-store';

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { DCtx, getFrameContentSize } = require(workerData.zstdBindingPath);
const dctx = new DCtx();
const MAX = workerData.maxChunkSize;
function decode(body, digests) {
  const out = [];
  let o = 0;
  for (let i = 0; i < digests.length; i++) {
    const want = digests[i];
    const at = 'chunk ' + want;
    if (o + 48 > body.length) throw new Error(at + ': response ends at byte ' + body.length + ' before its record');
    const got = body.toString('hex', o, o + 32);
    if (got !== want) throw new Error(at + ': the server sent ' + got + ' in its place');
    if (body.toString('latin1', o + 32, o + 36) !== 'HVC1') throw new Error(at + ': bad magic');
    const codec = body[o + 36];
    const rawLength = body.readUInt32LE(o + 40);
    const stored = body.readUInt32LE(o + 44);
    if (rawLength === 0 || rawLength > MAX) throw new Error(at + ': header claims ' + rawLength + ' bytes, a chunk is 1..' + MAX);
    if (o + 48 + stored > body.length) throw new Error(at + ': payload of ' + stored + ' bytes runs past the response');
    const payload = body.subarray(o + 48, o + 48 + stored);
    let raw;
    if (codec === 0) {
      // Stored as is: handed out as a view of the response (which goes back with the results).
      if (stored !== rawLength) throw new Error(at + ': stored ' + stored + ' bytes, header says ' + rawLength);
      raw = payload;
    } else if (codec === 1) {
      raw = Buffer.allocUnsafeSlow(rawLength);
      const claimed = getFrameContentSize(payload);
      if (claimed !== null && claimed !== rawLength) throw new Error(at + ': zstd frame claims ' + claimed + ' bytes, the header ' + rawLength);
      let n;
      try { n = dctx.decompress(raw, payload); } catch (e) { throw new Error(at + ': cannot decode: ' + e.message); }
      if (n !== rawLength) throw new Error(at + ': decoded to ' + n + ' bytes, the header says ' + rawLength);
    } else throw new Error(at + ': unknown codec ' + codec);
    if (createHash('sha256').update(raw).digest('hex') !== want) throw new Error(at + ': does not match its digest');
    out.push(raw);
    o += 48 + stored;
  }
  if (o !== body.length) throw new Error((body.length - o) + ' bytes after the last record');
  return out;
}
parentPort.on('message', ({ id, body, digests }) => {
  try {
    const raws = decode(Buffer.from(body), digests);
    // Each chunk as [its own memory] or [offset, length] in the response, moved back with it.
    const list = raws.map((r) => (r.buffer === body ? [r.byteOffset, r.length] : r.buffer));
    parentPort.postMessage({ id, body, raws: list }, [body, ...raws.filter((r) => r.buffer !== body).map((r) => r.buffer)]);
  } catch (e) {
    parentPort.postMessage({ id, error: e.message });
  }
});
`;

interface Job {
  resolve: (raws: Buffer[]) => void;
  reject: (err: Error) => void;
  where: string;
}

class DecoderWorker {
  readonly worker: Worker;
  readonly jobs = new Map<number, Job>();
  constructor() {
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { zstdBindingPath: require.resolve('zstd-napi/binding'), maxChunkSize: MAX_CHUNK_SIZE } });
    this.worker.unref(); // referenced only while it has work (see run)
    this.worker.on('message', (m: { id: number; body?: ArrayBuffer; raws?: Array<ArrayBuffer | [number, number]>; error?: string }) => {
      const job = this.jobs.get(m.id);
      if (!job) return;
      this.jobs.delete(m.id);
      if (this.jobs.size === 0) this.worker.unref();
      if (m.error !== undefined) job.reject(new RepositoryError('CORRUPT', `${job.where}: ${m.error}`, 'run `hvprotect verify --read-data`; restore from another recovery point'));
      else job.resolve(m.raws!.map((b) => (Array.isArray(b) ? Buffer.from(m.body!, b[0], b[1]) : Buffer.from(b))));
    });
    this.worker.on('error', (err) => {
      for (const j of this.jobs.values()) j.reject(err);
      this.jobs.clear();
    });
  }
}

let pool: DecoderWorker[] | undefined;
let nextId = 0;
let turn = 0;

/** Worker threads: one per core, at most 4 (a restore is also HTTP and writes on the main thread). */
function workers(): DecoderWorker[] {
  pool ??= Array.from({ length: Math.max(1, Math.min(4, availableParallelism())) }, () => new DecoderWorker());
  return pool;
}

/**
 * Decodes a POST /chunks/read response for `digests` on a worker thread; resolves with each
 * chunk's plaintext, each hashed against its digest. `body` is moved to the worker: do not use it
 * afterwards. A defect rejects with CORRUPT naming `where` and the chunk.
 */
export function decodeChunkRecords(body: Buffer, digests: string[], where: string): Promise<Buffer[]> {
  const ws = workers();
  // The least busy worker (ties in turn).
  let w = ws[turn++ % ws.length];
  for (const x of ws) if (x.jobs.size < w.jobs.size) w = x;
  const id = nextId++;
  return new Promise((resolve, reject) => {
    w.jobs.set(id, { resolve, reject, where });
    w.worker.ref();
    let owned = body;
    if (body.byteOffset !== 0 || body.byteLength !== body.buffer.byteLength) {
      owned = Buffer.allocUnsafeSlow(body.length); // never move a shared (pooled) ArrayBuffer
      body.copy(owned);
    }
    w.worker.postMessage({ id, body: owned.buffer, digests }, [owned.buffer as ArrayBuffer]);
  });
}
