// Wire formats shared by the storage API server and client.
//
// Index slot patch body (POST .../disks/:diskId/slots): records of 40 bytes,
//   8 bytes slot number (u64 little-endian) + 32 bytes digest (zero bytes = all-zero chunk).
// Full index body (PUT .../disks/:diskId/index): 32 bytes per slot, in disk order.
// Errors: JSON { error: CODE, message: what was wrong, hint: what to do, details? }.
export const SLOT_RECORD_SIZE = 40;
export const API_PREFIX = '/v1';
/** Largest slot patch body: 1M slots. */
export const MAX_PATCH_BODY = 1024 * 1024 * SLOT_RECORD_SIZE;
/** Largest full index body (a 2 TiB disk at 256 KiB chunks). */
export const MAX_FULL_INDEX_BODY = 256 * 1024 * 1024;
/** Most digests per "which are missing?" call. */
export const MAX_MISSING_QUERY = 16384;

export interface ApiErrorBody {
  error: string;
  message: string;
  hint?: string;
  details?: Record<string, unknown>;
}

export function encodeSlotPatch(slots: number[], digests: Buffer): Buffer {
  const out = Buffer.alloc(slots.length * SLOT_RECORD_SIZE);
  for (let i = 0; i < slots.length; i++) {
    out.writeBigUInt64LE(BigInt(slots[i]), i * SLOT_RECORD_SIZE);
    digests.copy(out, i * SLOT_RECORD_SIZE + 8, i * 32, i * 32 + 32);
  }
  return out;
}

export function decodeSlotPatch(body: Buffer): { slots: number[]; digests: Buffer } {
  if (body.length % SLOT_RECORD_SIZE !== 0) throw new Error(`body of ${body.length} bytes is not a whole number of ${SLOT_RECORD_SIZE}-byte slot records`);
  const n = body.length / SLOT_RECORD_SIZE;
  const slots = new Array<number>(n);
  const digests = Buffer.alloc(n * 32);
  for (let i = 0; i < n; i++) {
    const s = body.readBigUInt64LE(i * SLOT_RECORD_SIZE);
    if (s > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`slot ${s} too large`);
    slots[i] = Number(s);
    body.copy(digests, i * 32, i * SLOT_RECORD_SIZE + 8, (i + 1) * SLOT_RECORD_SIZE);
  }
  return { slots, digests };
}

/**
 * Chunk batch body (POST /v1/chunks/batch): records of
 *   32 bytes digest + 4 bytes length (u32 little-endian) + that many bytes of chunk plaintext.
 * The server checks every digest before storing any chunk of the batch.
 */
export const MAX_CHUNK_BATCH_BODY = 32 * 1024 * 1024;

/** The batch body as pieces to write in order (no copy of the chunk bytes). */
export function encodeChunkBatchParts(chunks: Array<{ digest: string; data: Buffer }>): Buffer[] {
  const parts: Buffer[] = [];
  for (const c of chunks) {
    const h = Buffer.alloc(36);
    h.write(c.digest, 0, 32, 'hex');
    h.writeUInt32LE(c.data.length, 32);
    parts.push(h, c.data);
  }
  return parts;
}

export function decodeChunkBatch(body: Buffer): Array<{ digest: string; data: Buffer }> {
  const out: Array<{ digest: string; data: Buffer }> = [];
  let o = 0;
  while (o < body.length) {
    if (o + 36 > body.length) throw new Error(`truncated record header at byte ${o}`);
    const digest = body.toString('hex', o, o + 32);
    const len = body.readUInt32LE(o + 32);
    if (o + 36 + len > body.length) throw new Error(`record at byte ${o} claims ${len} bytes, only ${body.length - o - 36} left`);
    out.push({ digest, data: body.subarray(o + 36, o + 36 + len) });
    o += 36 + len;
  }
  return out;
}

/**
 * Chunk read (POST /v1/chunks/read, body { "digests": [...] }): the chunks as stored, for a
 * client that decodes and checks them itself (recovery/chunk-decoder.ts), in the order asked, as
 * records of
 *   32 bytes digest + the chunk file without its seal (chunk-store.ts: "HVC1", codec 0 or 1,
 *   3 reserved, u32 raw length, u32 payload length, payload).
 * Nothing is decompressed or hashed on the server: the reader does both, off its event loop.
 */
export const MAX_CHUNK_READ_BATCH = 256;
/** The largest response: a batch whose stored chunks come to more is refused (ask for fewer). */
export const MAX_CHUNK_READ_BYTES = 64 * 1024 * 1024;
export const CHUNK_READ_DIGEST_BYTES = 32;
