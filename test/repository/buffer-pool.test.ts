// The upload body pool: memory is reused, only memory the pool made is ever taken back, and a lend
// past the budget waits for memory given back (the bound on upload bodies held at once).
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

  describe('lend', () => {
    const MiB = 1024 * 1024;
    const lent = (pool: BufferPool, length: number) => {
      const got: Buffer[] = [];
      const withdraw = pool.lend(length, (b) => got.push(b));
      return { got, withdraw };
    };

    it('grants at once within the budget, then makes the next wait until memory is given back, in order', () => {
      const pool = new BufferPool(MiB, 8 * MiB, 8 * MiB, 60_000);
      const a = lent(pool, 4 * MiB);
      const b = lent(pool, 4 * MiB);
      expect([a.got.length, b.got.length]).toEqual([1, 1]);
      const c = lent(pool, 3 * MiB);
      const d = lent(pool, 4 * MiB);
      expect([c.got.length, d.got.length, pool.waitingLends]).toEqual([0, 0, 2]);
      // A request that is not one the pool serves is not held back by the waiting ones.
      const small = lent(pool, 1000);
      expect(small.got).toHaveLength(1);
      pool.give(a.got[0].buffer);
      // The first waiter gets the 4 MiB given back though it asked for 3: the budget is spent.
      expect(c.got).toHaveLength(1);
      expect(c.got[0].buffer).toBe(a.got[0].buffer);
      expect(c.got[0].length).toBe(3 * MiB);
      expect(d.got).toHaveLength(0);
      pool.give(b.got[0].buffer);
      expect(d.got[0].buffer).toBe(b.got[0].buffer);
      expect(pool.waitingLends).toBe(0);
    });

    it('forgets a withdrawn lend, and does not hand it memory given back later', () => {
      const pool = new BufferPool(MiB, 8 * MiB, 4 * MiB, 60_000);
      const a = lent(pool, 4 * MiB);
      const b = lent(pool, 4 * MiB);
      expect(pool.waitingLends).toBe(1);
      b.withdraw();
      expect(pool.waitingLends).toBe(0);
      pool.give(a.got[0].buffer);
      expect(b.got).toHaveLength(0);
      expect(lent(pool, 4 * MiB).got[0].buffer).toBe(a.got[0].buffer);
    });

    it('gives plain memory to a lend that waited its longest (memory lent and never given back must not stall uploads)', async () => {
      const pool = new BufferPool(MiB, 8 * MiB, 4 * MiB, 30);
      const a = lent(pool, 4 * MiB);
      const b = lent(pool, 2 * MiB);
      expect(b.got).toHaveLength(0);
      await new Promise((r) => setTimeout(r, 100));
      expect(b.got).toHaveLength(1);
      expect(b.got[0].length).toBe(2 * MiB);
      expect(pool.idOf(b.got[0].buffer)).toBeUndefined();
      expect(pool.waitingLends).toBe(0);
      pool.give(a.got[0].buffer); // no one waits: it stays idle for the next
      expect(b.got).toHaveLength(1);
    });
  });
});
