// describeScheduleWhenReady (client/protection.ts): Temporal answers a schedule's describe by
// querying the schedule's own workflow, which can fail for a moment; one CI run's `npm start`
// exited on such a failure (its reason was not shown, so the refusal below is an example, not the
// recorded cause). Such failures are asked again for a bounded time; a schedule that does not
// exist is said at once; one that never answers fails naming what Temporal said.
import { ScheduleNotFoundError, type ScheduleDescription } from '@temporalio/client';
import { ServiceError } from '@temporalio/client';
import { describeScheduleWhenReady } from '../../client/protection';

const description = { scheduleId: 'protect/ds1' } as unknown as ScheduleDescription;
const notReady = () => new ServiceError('Failed to describe schedule', { cause: Object.assign(new Error('9 FAILED_PRECONDITION: Workflow task is not completed yet.'), { code: 9 }) });

test('refusals while the schedule is not ready are asked again until it answers', async () => {
  let calls = 0;
  const waits: number[] = [];
  const d = await describeScheduleWhenReady(
    async () => {
      if (++calls < 4) throw notReady();
      return description;
    },
    'protect/ds1',
    20_000,
    async (ms) => void waits.push(ms),
  );
  expect(d).toBe(description);
  expect(calls).toBe(4);
  expect(waits).toEqual([100, 200, 400]);
});

test('a schedule that does not exist is said at once, not waited for', async () => {
  let calls = 0;
  const d = await describeScheduleWhenReady(
    async () => {
      calls++;
      throw new ScheduleNotFoundError('no such schedule', 'protect/ds2');
    },
    'protect/ds2',
    20_000,
    async () => {
      throw new Error('must not wait');
    },
  );
  expect(d).toBeUndefined();
  expect(calls).toBe(1);
});

test('a schedule that never answers fails within the bound, naming what Temporal said', async () => {
  const started = Date.now();
  await expect(describeScheduleWhenReady(async () => Promise.reject(notReady()), 'protect/ds3', 500)).rejects.toThrow(
    /schedule protect\/ds3 did not answer within 1 s: .*Workflow task is not completed yet/,
  );
  expect(Date.now() - started).toBeLessThan(5_000);
});

test('a refusal that asking again cannot change (permission denied, Temporal unreachable after the connection\'s own retries) is said at once', async () => {
  for (const [code, text] of [[7, '7 PERMISSION_DENIED: Request unauthorized.'], [14, '14 UNAVAILABLE: No connection established']] as const) {
    let calls = 0;
    await expect(
      describeScheduleWhenReady(
        async () => {
          calls++;
          throw new ServiceError('Failed to describe schedule', { cause: Object.assign(new Error(text), { code }) });
        },
        'protect/ds4',
        20_000,
        async () => {
          throw new Error('must not wait');
        },
      ),
    ).rejects.toThrow(new RegExp(`schedule protect/ds4 could not be described: ${text}`));
    expect(calls).toBe(1);
  }
});
