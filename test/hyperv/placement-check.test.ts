// The transfer's "is the VM still here?" (activities/host/placement-check.ts): after every batch
// where asking is cheap; where it is a PowerShell process, at most once per interval, never
// waited for, and a "moved" answer acted on at the next batch.
import { placementCheck } from '../../activities/host/placement-check';

describe('placement check during a transfer', () => {
  it('with no interval asks after every batch and waits for the answer', async () => {
    let asked = 0;
    let answered = 0;
    const c = placementCheck(async () => {
      asked++;
      await new Promise((r) => setTimeout(r, 5));
      answered++;
    }, 0);
    for (let i = 0; i < 5; i++) await c.afterBatch();
    expect([asked, answered, c.asked]).toEqual([5, 5, 5]);
  });

  it('with an interval asks at most once per interval, in the background, and throws a "moved" at the next batch', async () => {
    let clock = 0;
    const answers: Array<(moved: boolean) => void> = [];
    const c = placementCheck(() => new Promise<void>((resolve, reject) => answers.push((moved) => (moved ? reject(new Error('VM moved')) : resolve()))), 10_000, () => clock);
    // 100 batches in the first 9.9 s: no ask at all.
    for (let i = 0; i < 100; i++, clock += 99) await c.afterBatch();
    expect(c.asked).toBe(0);
    // Past the interval: one ask, and afterBatch did not wait for it (its answer is still pending).
    clock = 10_000;
    await c.afterBatch();
    expect(c.asked).toBe(1);
    // While it is pending, no second ask, however much time passes.
    clock = 30_000;
    await c.afterBatch();
    expect(c.asked).toBe(1);
    answers[0](false);
    await new Promise((r) => setImmediate(r));
    await c.afterBatch(); // 20 s since the last ask: the next one
    expect(c.asked).toBe(2);
    answers[1](true);
    await new Promise((r) => setImmediate(r));
    await expect(c.afterBatch()).rejects.toThrow('VM moved');
    await expect(c.afterBatch()).rejects.toThrow('VM moved');
  });
});
