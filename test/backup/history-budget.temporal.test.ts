// A backup's history does not grow with the time its disks take: progress travels in the
// transfer's heartbeats (read from the pending activity), never as signals or other events. A
// backup throttled to run for over a minute has as many events as one of a few seconds.
import { startTestStack, startBackup, type TestStack } from '../support/stack';
import { readBackupProgress } from '../../client/backup-progress';
import type { BackupVmResult } from '../../workflows/backup-vm';

const MiB = 1024 * 1024;
/** Every step of a one-disk backup (locate, inspect, plan, checkpoint, transfer, commit, release, retention) fits in this. */
const EVENT_BUDGET = 100;
let stack: TestStack;

beforeAll(async () => {
  // 512 KiB/s and 1 MiB batches: a heartbeat every 2 s, as a real transfer of a big disk has.
  stack = await startTestStack({ hosts: ['hv01', 'hv02'], batchSlots: 4, throttleBytesPerSecond: 512 * 1024 });
});
afterAll(async () => {
  await stack?.stop();
});

async function historyLength(workflowId: string): Promise<number> {
  return (await stack.client.workflow.getHandle(workflowId).fetchHistory()).events?.length ?? 0;
}

test('a backup throttled to run for over a minute has no more events than one of seconds, and its progress still shows', async () => {
  const short = await stack.lab.createVm({ name: 'brief', host: 'hv01', disks: [{ sizeBytes: 2 * MiB, content: { kind: 'random', seed: 61, fill: 1 } }] });
  const long = await stack.lab.createVm({ name: 'lengthy', host: 'hv02', disks: [{ sizeBytes: 36 * MiB, content: { kind: 'random', seed: 62, fill: 1 } }] });
  const timing = { heartbeatTimeout: '10 seconds' };

  const brief = await startBackup(stack, { dataSource: 'brief', vm: short.vmId }, timing);
  await brief.result();
  const briefEvents = await historyLength(brief.workflowId);

  const started = Date.now();
  const lengthy = await startBackup(stack, { dataSource: 'lengthy', vm: long.vmId }, timing);
  // The CLI's progress bar: positions advance while the transfer runs, with no event added.
  const positions: number[] = [];
  for (let done = false; !done; ) {
    const p = await readBackupProgress(lengthy).catch(() => undefined);
    const d = p?.disks[0];
    if (d && !d.done && d.position > 0 && d.position !== positions[positions.length - 1]) positions.push(d.position);
    done = d?.done === true || (await lengthy.describe()).status.name !== 'RUNNING';
    await new Promise((r) => setTimeout(r, 1000));
  }
  const r = (await lengthy.result()) as BackupVmResult;
  const seconds = (Date.now() - started) / 1000;
  const lengthyEvents = await historyLength(lengthy.workflowId);

  console.log(`history budget: ${briefEvents} events for ${2} MiB, ${lengthyEvents} events for 36 MiB over ${seconds.toFixed(0)} s`, { positions: positions.length });
  expect(seconds).toBeGreaterThan(60);
  expect(r.disks[0].bytesRead).toBe(36 * MiB);
  expect(positions.length).toBeGreaterThanOrEqual(5);
  expect(positions).toEqual([...positions].sort((a, b) => a - b));
  expect(briefEvents).toBeLessThanOrEqual(EVENT_BUDGET);
  expect(lengthyEvents).toBeLessThanOrEqual(EVENT_BUDGET);
  // Minutes of transfer cost no event more than seconds do (locate probes answering in another
  // order cancel another number of losers: a few events either way).
  expect(lengthyEvents).toBeLessThanOrEqual(briefEvents + 10);
  const history = await stack.client.workflow.getHandle(lengthy.workflowId).fetchHistory();
  expect(history.events!.filter((e) => e.workflowExecutionSignaledEventAttributes)).toEqual([]);
}, 240_000);
