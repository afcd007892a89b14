// Load, reduced to fit a test run (bench/load.ts is the 200-VM version): 40 lab VMs on 4 lab
// hosts, all protected by schedules and triggered at once, on the real dev server. Proven from
// the workflow histories, not from our own bookkeeping:
//   - every backup commits a recovery point, and every point restores bit for bit;
//   - never more than 3 disk transfers at once on one host (DPM's default, the agent's transfer
//     worker limit), and the limit is actually reached;
//   - no two backups of one VM overlap: a second trigger while one runs is skipped by the
//     schedule (overlap SKIP), and a backup started by hand meanwhile is refused by the lease;
//   - no checkpoint left behind, every VM still running.
import { ScheduleOverlapPolicy, type WorkflowHandle } from '@temporalio/client';
import { failureChain, restoredBytes, startTestStack, type TestStack } from '../support/stack';
import { initialDiskContent, type InitialContent } from '../../hypervisor/lab';
import type { VmFacts } from '../../hypervisor/types';
import { protectVm, removeProtection, scheduleIdOf } from '../../client/protection';
import { SERVER_TASK_QUEUE } from '../../temporal/task-queues';
import type { BackupVmInput, BackupVmResult } from '../../workflows/backup-vm';
import { leaseInterval, maxOverlap, overlappingPairs, readWorkflowRuns, transfersByHost, withRetry, type WorkflowRun } from './history';

const MiB = 1024 * 1024;
const HOSTS = ['hv01', 'hv02', 'hv03', 'hv04'];
const VMS_PER_HOST = 10;
const DISK = 4 * MiB;
const MAX_TRANSFERS = 3; // the agent's default (startAgent maxConcurrentTransfers)
// Each transfer reads at 4 MB/s at most, so that a 4 MiB disk takes about a second: ten VMs per
// host then always queue behind the limit of 3 instead of finishing before the next one starts.
const THROTTLE = 4_000_000;

let stack: TestStack;
const vms: Array<{ facts: VmFacts; ds: string; content: InitialContent }> = [];

beforeAll(async () => {
  stack = await startTestStack({ hosts: HOSTS, throttleBytesPerSecond: THROTTLE });
}, 60_000);

afterAll(async () => {
  for (const v of vms) await removeProtection(stack.client, v.ds).catch(() => undefined);
  await stack?.stop();
}, 60_000);

/**
 * What the schedules of our VMs started so far and how many still run, from DescribeSchedule
 * (visibility lags by seconds, even minutes, when the machine is busy; the schedules do not).
 */
async function scheduledRuns(): Promise<{ ids: string[]; running: number; skipped: number; runningIds: Map<string, string> }> {
  const ids: string[] = [];
  const runningIds = new Map<string, string>();
  let running = 0;
  let skipped = 0;
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < vms.length) {
        const v = vms[next++];
        const d = await withRetry('describe schedule', () => stack.client.schedule.getHandle(scheduleIdOf(v.ds)).describe());
        for (const a of d.info.recentActions) ids.push(a.action.workflow.workflowId);
        running += d.info.runningActions.length;
        if (d.info.runningActions[0]) runningIds.set(v.ds, d.info.runningActions[0].workflow.workflowId);
        skipped += d.info.numActionsSkippedOverlap;
      }
    }),
  );
  return { ids: [...new Set(ids)], running, skipped, runningIds };
}

test(`${HOSTS.length * VMS_PER_HOST} VMs on ${HOSTS.length} hosts at once: all points commit, ≤ ${MAX_TRANSFERS} transfers per host, no backup of a VM overlaps another`, async () => {
  // ---- the VMs and their protection ---------------------------------------------------------------
  for (let i = 0; i < HOSTS.length * VMS_PER_HOST; i++) {
    const host = HOSTS[i % HOSTS.length];
    const name = `load-${String(i).padStart(3, '0')}`;
    const content: InitialContent = { kind: 'random', seed: 1000 + i, fill: 1 };
    const facts = await stack.lab.createVm({ name, host, disks: [{ sizeBytes: DISK, content }] });
    const p = await protectVm(stack.client, { vm: { vmId: facts.vmId, name, host, state: 'running' }, dataSource: name, schedule: { everyHours: 24 } });
    vms.push({ facts, ds: p.dataSource, content });
  }

  // ---- everything at once, then again while the first runs are going ----------------------------
  // trigger() in the TypeScript SDK overrides the schedule's overlap policy with ALLOW_ALL unless
  // told otherwise: pass SKIP, the policy protectVm gives every schedule, as a timed run uses it.
  const started = Date.now();
  await Promise.all(vms.map((v) => withRetry('trigger', () => stack.client.schedule.getHandle(scheduleIdOf(v.ds)).trigger(ScheduleOverlapPolicy.SKIP))));
  // Once every schedule has started its run, trigger all again: the runs still going make the
  // schedule skip (a run that finished already lets a second backup start, after it).
  for (let s = await scheduledRuns(); s.ids.length < vms.length; s = await scheduledRuns()) {
    if (Date.now() - started > 60_000) throw new Error(`schedules did not start their runs: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  await Promise.all(vms.map((v) => withRetry('trigger', () => stack.client.schedule.getHandle(scheduleIdOf(v.ds)).trigger(ScheduleOverlapPolicy.SKIP))));

  // A backup by hand of a VM whose scheduled backup holds the lease: the lease refuses it.
  const byHand: Array<Promise<{ ds: string; handle: WorkflowHandle } | undefined>> = vms.slice(0, 4).map(async (v) => {
    for (let k = 0; k < 100; k++) {
      const d = await withRetry('describe schedule', () => stack.client.schedule.getHandle(scheduleIdOf(v.ds)).describe());
      const running = d.info.runningActions[0]?.workflow;
      if (running) {
        const [run] = await readWorkflowRuns(stack.client, [{ workflowId: running.workflowId }]);
        if (run.activities.some((a) => a.activityType === 'acquireBackupLease' && a.outcome === 'completed') && run.outcome === 'open') {
          const handle = await stack.client.workflow.start('backupVm', {
            taskQueue: SERVER_TASK_QUEUE,
            workflowId: `backup/${v.ds}/by-hand`,
            args: [{ dataSource: v.ds, vm: v.facts.vmId }],
          });
          return { ds: v.ds, handle };
        }
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return undefined;
  });
  const manual = (await Promise.all(byHand)).filter((m): m is { ds: string; handle: WorkflowHandle } => !!m);
  expect(manual.length).toBeGreaterThan(0);

  // ---- wait for all of it ------------------------------------------------------------------------
  // Until every schedule has no run going and every run it started has closed.
  let state = await scheduledRuns();
  for (;;) {
    if (Date.now() - started > 180_000) throw new Error(`backups still running after 180 s: ${JSON.stringify({ ...state, runningIds: [...state.runningIds] })}`);
    await Promise.allSettled(state.ids.map((id) => stack.client.workflow.getHandle(id).result()));
    const again = await scheduledRuns();
    const settled = again.running === 0 && again.ids.length === state.ids.length;
    state = again;
    if (settled) break;
    await new Promise((r) => setTimeout(r, 300));
  }
  const manualOutcomes = await Promise.allSettled(manual.map((m) => m.handle.result()));
  const elapsedMs = Date.now() - started;
  const skipped = state.skipped;

  // And any backup the repository has a point from (there should be none beyond these).
  const ids = new Set([...state.ids, ...manual.map((m) => m.handle.workflowId)]);
  for (const v of vms) {
    for (const p of await stack.server.repository.listPoints(v.ds)) {
      const wf = p.backup.workflowId;
      if (wf) ids.add(wf);
    }
  }
  await Promise.allSettled([...ids].map((id) => stack.client.workflow.getHandle(id).result()));
  const runs: WorkflowRun[] = await readWorkflowRuns(stack.client, [...ids].map((workflowId) => ({ workflowId })));
  const scheduled = runs.filter((r) => !r.workflowId.endsWith('/by-hand'));

  // Every scheduled backup completed with a point; every VM has one.
  const failed = scheduled.filter((r) => r.outcome !== 'completed');
  expect(failed.map((r) => `${r.workflowId}: ${r.outcome} ${r.failure ?? ''}`)).toEqual([]);
  expect(scheduled.length).toBeGreaterThanOrEqual(vms.length);
  // The second round of triggers came while the first runs were going: skipped, not queued.
  expect(skipped).toBeGreaterThan(0);
  // A backup by hand during a scheduled one is refused by the lease (or, if the scheduled one
  // finished in between, runs after it: never beside it).
  for (const [i, o] of manualOutcomes.entries()) {
    if (o.status === 'rejected') expect(failureChain(o.reason).text).toMatch(/a backup of .* is already running.*\[BackupAlreadyRunning\]/);
    else expect((o.value as BackupVmResult).dataSource).toBe(manual[i].ds);
  }
  expect(manualOutcomes.some((o) => o.status === 'rejected')).toBe(true);

  // The repository holds exactly the points of the backups that completed, one each.
  const committedIds = new Map<string, string[]>();
  for (const r of runs) {
    if (r.outcome !== 'completed') continue;
    const ds = (r.result as BackupVmResult).dataSource;
    committedIds.set(ds, [...(committedIds.get(ds) ?? []), r.workflowId]);
  }
  for (const v of vms) {
    const points = await stack.server.repository.listPoints(v.ds);
    expect({ ds: v.ds, points: points.map((p) => p.backup.workflowId).sort() }).toEqual({ ds: v.ds, points: (committedIds.get(v.ds) ?? []).sort() });
    expect(points.length).toBeGreaterThanOrEqual(1);
  }

  // ≤ 3 transfers at once per host, from the histories; and the limit was reached somewhere.
  const byHost = transfersByHost(runs);
  expect([...byHost.keys()].sort()).toEqual(HOSTS);
  const peaks = Object.fromEntries([...byHost].map(([h, iv]) => [h, maxOverlap(iv).max]));
  expect(Object.entries(peaks).filter(([, peak]) => peak > MAX_TRANSFERS)).toEqual([]);
  expect(Math.max(...Object.values(peaks))).toBe(MAX_TRANSFERS);

  // No two backups of one VM held it at once.
  const byDs = new Map<string, ReturnType<typeof leaseInterval>[]>();
  for (const r of runs) {
    const iv = leaseInterval(r);
    if (!iv) continue;
    const ds = (r.input as BackupVmInput).dataSource;
    byDs.set(ds, [...(byDs.get(ds) ?? []), iv]);
  }
  const overlaps = [...byDs.values()].flatMap((ivs) => overlappingPairs(ivs.filter((x) => !!x) as NonNullable<(typeof ivs)[number]>[]));
  expect(overlaps.map(([a, b]) => `${a.label} / ${b.label}`)).toEqual([]);

  // Every point restores bit for bit (the guests do not write: every point holds the first content).
  let restoredPoints = 0;
  for (const v of vms) {
    const want = initialDiskContent(v.content, DISK);
    for (const p of await stack.server.repository.listPoints(v.ds)) {
      const bytes = await restoredBytes(stack, v.ds, p.pointId, v.facts.disks[0].diskId);
      expect({ ds: v.ds, pointId: p.pointId, equal: bytes.equals(want) }).toEqual({ ds: v.ds, pointId: p.pointId, equal: true });
      restoredPoints++;
    }
  }
  expect(restoredPoints).toBe([...committedIds.values()].reduce((n, ids) => n + ids.length, 0));

  // Nothing left behind on the hosts.
  for (const v of vms) {
    const f = await stack.lab.inspectVm(v.facts.vmId);
    expect({ vm: v.ds, checkpoints: f.checkpoints, state: f.state }).toEqual({ vm: v.ds, checkpoints: [], state: 'running' });
  }

  // For the log: what this run looked like.
  console.log(
    `load: ${scheduled.length} scheduled backups of ${vms.length} VMs in ${(elapsedMs / 1000).toFixed(1)} s; ` +
      `${skipped} triggers skipped (overlap), ${manualOutcomes.filter((o) => o.status === 'rejected').length}/${manual.length} by-hand backups refused; ` +
      `peak transfers per host ${JSON.stringify(peaks)}`,
  );
}, 240_000);
