// The upload body pool: memory is reused, and only memory the pool made is ever taken back.
import { BufferPool } from '../../repository/buffer-pool';

describe('BufferPool', () => {
  it('hands back the same memory after give, sized to a class, and never a buffer in use', () => {
    const pool = new BufferPool(1024 * 1024, 8 * 1024 * 1024, 16 * 1024 * 1024);
    const a = pool.take(3 * 1024 * 1024 + 5);
    expect(a.length).toBe(3 * 1024 * 1024 + 5);
    expect(a.buffer.byteLength).toBe(4 * 1024 * 1024);
    expect(pool.owns(a.buffer)).toBe(true);
    const b = pool.take(3 * 1024 * 1024);
    expect(b.buffer).not.toBe(a.buffer); // a is still in use
    pool.give(a.buffer as ArrayBuffer);
    const c = pool.take(4 * 1024 * 1024);
    expect(c.buffer).toBe(a.buffer);
    expect(pool.take(4 * 1024 * 1024).buffer).not.toBe(a.buffer); // given once, taken once
  });

  it('ignores memory it did not make, and does not pool small or oversize requests', () => {
    const pool = new BufferPool(1024 * 1024, 8 * 1024 * 1024, 16 * 1024 * 1024);
    const foreign = new ArrayBuffer(1024 * 1024);
    pool.give(foreign);
    expect(pool.take(1024 * 1024).buffer).not.toBe(foreign);
    const small = pool.take(1000);
    expect(small.length).toBe(1000);
    expect(pool.owns(small.buffer)).toBe(false);
    const huge = pool.take(9 * 1024 * 1024);
    expect(pool.owns(huge.buffer)).toBe(false);
    // A buffer transferred to a worker and back is a new object: accepted only when the caller says so.
    const t = new ArrayBuffer(2 * 1024 * 1024);
    pool.give(t);
    expect(pool.take(2 * 1024 * 1024).buffer).not.toBe(t);
    pool.give(t, true);
    expect(pool.take(2 * 1024 * 1024).buffer).toBe(t);
  });

  it('keeps at most its idle limit', () => {
    const pool = new BufferPool(1024 * 1024, 8 * 1024 * 1024, 2 * 1024 * 1024);
    const bufs = [pool.take(1024 * 1024), pool.take(1024 * 1024), pool.take(1024 * 1024)];
    for (const b of bufs) pool.give(b.buffer as ArrayBuffer);
    const again = [pool.take(1024 * 1024), pool.take(1024 * 1024), pool.take(1024 * 1024)];
    const reused = again.filter((b) => bufs.some((x) => x.buffer === b.buffer));
    expect(reused).toHaveLength(2);
  });
});
