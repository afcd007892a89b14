// Upload bodies and V8's collector (young-gc.ts, buffer-pool.ts): the bodies of a real upload
// over HTTP land in pooled shared memory that the encoder workers read in place, are stored bit
// for bit, and every 16 MiB of body is followed by a scavenge, so the parser's dead body pieces
// are found young instead of piling up into full mark-compacts.
import { PerformanceObserver, constants } from 'node:perf_hooks';
import { createHash, randomBytes } from 'node:crypto';
import { SWEEP_EVERY_BYTES, youngSweeps } from '../../storage-api/young-gc';
import { bodyPool } from '../../repository/buffer-pool';
import { startFixture } from './support';
import type { Fixture } from './support';

describe('upload bodies', () => {
  let fx: Fixture;
  beforeAll(async () => {
    fx = await startFixture();
  });
  afterAll(async () => fx.close());

  it('are stored from shared memory bit for bit, with a scavenge per 16 MiB received', async () => {
    const kinds: number[] = [];
    const obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) kinds.push((e as unknown as { detail: { kind: number } }).detail.kind);
    });
    obs.observe({ entryTypes: ['gc'] });
    const { agent } = await fx.backupJob('vm-upload-memory');
    const before = youngSweeps();
    const chunkSize = 256 * 1024;
    const sent = new Map<string, Buffer>();
    // 64 MiB in 4 MiB batches, 6 requests in flight at any time: pooled bodies are reused from
    // one request to the next while the encoder workers still read earlier ones.
    const batches = 16;
    let next = 0;
    await Promise.all(Array.from({ length: 6 }, async () => {
      while (next < batches) {
        next++;
        const chunks = Array.from({ length: 16 }, () => {
          const data = randomBytes(chunkSize);
          const digest = createHash('sha256').update(data).digest('hex');
          sent.set(digest, data);
          return { digest, data };
        });
        const results = await agent.putChunks(chunks);
        expect(results.every((r) => r.written)).toBe(true);
      }
    }));
    const received = batches * 16 * chunkSize;
    expect(youngSweeps() - before).toBeGreaterThanOrEqual(Math.floor(received / SWEEP_EVERY_BYTES) - 1);
    await new Promise((r) => setTimeout(r, 50)); // the observer's entries come asynchronously
    obs.disconnect();
    expect(kinds.filter((k) => k === constants.NODE_PERFORMANCE_GC_MINOR).length).toBeGreaterThanOrEqual(2);
    for (const [digest, data] of sent) expect((await fx.repo.chunks.read(digest)).equals(data)).toBe(true);
  });

  it('wait unread while the pool is spent, then are read and stored once memory is given back', async () => {
    const { agent } = await fx.backupJob('vm-upload-wait');
    // Spend the pool's budget as uploads in flight would (whatever is idle or can still be made).
    const held: Buffer[] = [];
    for (;;) {
      const b = bodyPool.take(4 * 1024 * 1024);
      if (bodyPool.idOf(b.buffer) === undefined) break;
      held.push(b);
    }
    expect(held.length).toBeGreaterThan(0);
    const chunks = Array.from({ length: 16 }, () => {
      const data = randomBytes(256 * 1024);
      return { digest: createHash('sha256').update(data).digest('hex'), data };
    });
    let settled = false;
    const upload = agent.putChunks(chunks).finally(() => (settled = true));
    const deadline = Date.now() + 1500;
    while (bodyPool.waitingLends === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(bodyPool.waitingLends).toBe(1);
    expect(settled).toBe(false);
    for (const b of held) bodyPool.give(b.buffer);
    expect(bodyPool.waitingLends).toBe(0);
    expect((await upload).every((r) => r.written)).toBe(true);
    for (const c of chunks) expect((await fx.repo.chunks.read(c.digest)).equals(c.data)).toBe(true);
  });
});
