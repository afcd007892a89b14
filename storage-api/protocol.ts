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
