// All-zero chunks are never stored: their digest in an index is 32 zero bytes. A module of its
// own so that agents can test for zero chunks without loading the chunk store (zstd, workers).
export const ZERO_DIGEST = Buffer.alloc(32);

const ZERO_WINDOW = Buffer.alloc(64 * 1024);

export function isAllZero(buf: Buffer): boolean {
  // Compare in 64 KiB windows against one zero buffer: native memcmp speed, no allocation.
  for (let off = 0; off < buf.length; off += ZERO_WINDOW.length) {
    const end = Math.min(buf.length, off + ZERO_WINDOW.length);
    if (buf.compare(ZERO_WINDOW, 0, end - off, off, end) !== 0) return false;
  }
  return true;
}
