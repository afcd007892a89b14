// The upload body pool: memory is reused, and only memory the pool made is ever taken back.
import { BufferPool } from '../../repository/buffer-pool';

describe('BufferPool', () => {
  it('hands back the same memory after give, sized to a class, and never a buffer in use', () => {
    const pool = new BufferPool(1024 * 1024, 8 * 1024 * 1024, 16 * 1024 * 1024);
    const a = pool.take(3 * 1024 * 1024 + 5);
    expect(a.length).toBe(3 * 1024 * 1024 + 5);
    expect(a.buffer.byteLength).toBe(4 * 1024 * 1024);
    expect(pool.idOf(a.buffer)).toBeDefined();
    const b = pool.take(3 * 1024 * 1024);
    expect(b.buffer).not.toBe(a.buffer); // a is still in use
    pool.give(a.buffer);
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
    expect(pool.idOf(small.buffer)).toBeUndefined();
    const huge = pool.take(9 * 1024 * 1024);
    expect(pool.idOf(huge.buffer)).toBeUndefined();
    // Shared memory of the right size that another pool (or anyone else) made is not taken either.
    const other = new BufferPool(1024 * 1024, 8 * 1024 * 1024, 16 * 1024 * 1024).take(2 * 1024 * 1024);
    pool.give(other.buffer);
    expect(pool.take(2 * 1024 * 1024).buffer).not.toBe(other.buffer);
    const t = new SharedArrayBuffer(2 * 1024 * 1024);
    pool.give(t);
    expect(pool.take(2 * 1024 * 1024).buffer).not.toBe(t);
  });

  it('names its memory by a stable id', () => {
    const pool = new BufferPool(1024 * 1024, 8 * 1024 * 1024, 16 * 1024 * 1024);
    const a = pool.take(1024 * 1024);
    const b = pool.take(1024 * 1024);
    const [ida, idb] = [pool.idOf(a.buffer), pool.idOf(b.buffer)];
    expect(ida).toBeDefined();
    expect(idb).not.toBe(ida);
    pool.give(a.buffer);
    expect(pool.idOf(pool.take(1024 * 1024).buffer)).toBe(ida);
    expect(pool.idOf(Buffer.alloc(1024 * 1024).buffer)).toBeUndefined();
  });

  it('makes at most its budget, lent and idle together, and keeps all of it', () => {
    const pool = new BufferPool(1024 * 1024, 8 * 1024 * 1024, 2 * 1024 * 1024);
    const bufs = [pool.take(1024 * 1024), pool.take(1024 * 1024), pool.take(1024 * 1024)];
    expect(bufs.map((b) => pool.idOf(b.buffer) !== undefined)).toEqual([true, true, false]); // the third is past the budget
    for (const b of bufs) pool.give(b.buffer);
    const again = [pool.take(1024 * 1024), pool.take(1024 * 1024), pool.take(1024 * 1024)];
    expect(again.filter((b) => bufs.some((x) => x.buffer === b.buffer))).toHaveLength(2);
    expect(pool.idOf(again[2].buffer)).toBeUndefined();
  });
});
