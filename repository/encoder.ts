// Chunk encoding (SHA-256 of the plaintext + zstd) off the event loop: a small pool of worker
// threads, so the storage API keeps receiving while chunks are hashed and compressed, and the
// server uses every core it is given. The worker is plain JavaScript (eval) so it runs the same
// from dist/ and under jest.
import { cpus } from 'node:os';
import { Worker } from 'node:worker_threads';
import { CODEC_NONE, CODEC_ZSTD, ZSTD_LEVEL, encodeChunkPayload } from './codec';
import type { Codec } from './codec';
import { createHash } from 'node:crypto';

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
const { createHash } = require('node:crypto');
const { compress } = require(workerData.zstdPath);
const ZERO = Buffer.alloc(65536);
function isZero(b) {
  for (let o = 0; o < b.length; o += ZERO.length) {
    const e = Math.min(b.length, o + ZERO.length);
    if (b.compare(ZERO, 0, e - o, o, e) !== 0) return false;
  }
  return true;
}
parentPort.on('message', ({ id, data }) => {
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
  raw: Buffer;
  resolve: (e: EncodedChunk) => void;
  reject: (err: Error) => void;
}

export class ChunkEncoder {
  private readonly workers: Worker[] = [];
  private readonly inFlight: number[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;

  /**
   * threads = 0 encodes on the calling thread. Default: one per core, at least 2, at most 4
   * (measured on the shared 2-core machine, 1 GiB ingest: 2 threads 4.4-5.4 s, none 5.1-6.6 s,
   * for ~75 MB more server memory).
   */
  constructor(threads = Math.min(4, Math.max(2, cpus().length))) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { zstdPath: require.resolve('zstd-napi'), level: ZSTD_LEVEL } });
      w.unref();
      w.on('message', (m: { id: number; digest: string; allZero: boolean; codec: Codec; payload: Uint8Array | null; error?: string }) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        this.inFlight[i]--;
        if (m.error) return p.reject(new Error(`chunk encoder: ${m.error}`));
        const payload = m.allZero ? Buffer.alloc(0) : m.payload ? Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength) : p.raw;
        p.resolve({ digest: m.digest, rawLength: p.raw.length, allZero: m.allZero, codec: m.codec, payload });
      });
      w.on('error', (err) => {
        for (const p of this.pending.values()) p.reject(err);
        this.pending.clear();
      });
      this.workers.push(w);
      this.inFlight.push(0);
    }
  }

  encode(raw: Buffer): Promise<EncodedChunk> {
    if (this.workers.length === 0) return Promise.resolve(encodeHere(raw));
    let best = 0;
    for (let i = 1; i < this.workers.length; i++) if (this.inFlight[i] < this.inFlight[best]) best = i;
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
