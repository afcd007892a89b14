// Load, reduced to fit a test run (bench/load.ts is the 200-VM version): 40 lab VMs on 4 lab
// hosts, all protected by schedules and triggered at once, on the real dev server. Proven from
// the workflow histories, not from our own bookkeeping:
//   - every backup commits a recovery point, and every point restores bit for bit;
//   - never more than 3 disk transfers at once on one host (DPM's default, the agent's transfer
//     worker limit), and the limit is actually reached;
//   - no two backups of one VM overlap: a second trigger while one runs is skipped by the VM's
//     protection, and a backup asked for by hand meanwhile is refused by it up front;
//   - no checkpoint left behind, every VM still running.
import { ScheduleOverlapPolicy, type WorkflowHandle } from '@temporalio/client';
import { failureChain, restoredBytes, startTestStack, type TestStack } from '../support/stack';
import { initialDiskContent, type InitialContent } from '../../hypervisor/lab';
import type { VmFacts } from '../../hypervisor/types';
import { JobRefused, protectVm, protectionState, removeProtection, scheduleIdOf, startBackupNow } from '../../client/protection';
import type { BackupVmInput, BackupVmResult } from '../../workflows/backup-vm';
import { jobInterval, maxOverlap, overlappingPairs, readWorkflowRuns, transfersByHost, withRetry, type WorkflowRun } from './history';

const MiB = 1024 * 1024;
const HOSTS = ['hv01', 'hv02', 'hv03', 'hv04'];
const VMS_PER_HOST = 10;
const DISK = 4 * MiB;
const MAX_TRANSFERS = 3; // the agent's default (startAgent maxConcurrentTransfers)
// Each transfer reads at 1 MB/s at most, so that a 4 MiB disk takes about four seconds: ten VMs
// per host then always queue behind the limit of 3 instead of finishing before the next one
// starts. Each schedule is triggered a second time as soon as its protection shows the first
// backup running (waiting for all 40 first left only 5-8 of 40 still running in CI).
const THROTTLE = 1_000_000;

let stack: TestStack;
const vms: Array<{ facts: VmFacts; ds: string; content: InitialContent }> = [];

beforeAll(async () => {
  stack = await startTestStack({ hosts: HOSTS, throttleBytesPerSecond: THROTTLE });
}, 60_000);

afterAll(async () => {
  for (const v of vms) await removeProtection(stack.client, v.ds).catch(() => undefined);
  await stack?.stop();
}, 180_000);

/** What the protections of our VMs ran so far and what runs now (from their own state; each answer is a workflow task, so ask sparingly). */
async function protectionRuns(): Promise<{ ids: string[]; running: number; skipped: number; runningNow: string[] }> {
  const ids: string[] = [];
  const runningNow: string[] = [];
  let running = 0;
  let skipped = 0;
  let next = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < vms.length) {
        const v = vms[next++];
        const st = await withRetry('protection state', () => protectionState(stack.client, v.ds));
        for (const r of st.recent) if (r.outcome !== 'skipped') ids.push(r.workflowId);
        if (st.running) {
          running++;
          runningNow.push(v.ds);
          ids.push(st.running.workflowId);
        }
        skipped += st.skippedRuns;
      }
    }),
  );
  return { ids: [...new Set(ids)], running, skipped, runningNow };
}

test(`${HOSTS.length * VMS_PER_HOST} VMs on ${HOSTS.length} hosts at once: all points commit, ≤ ${MAX_TRANSFERS} transfers per host, no backup of a VM overlaps another`, async () => {
  // ---- the VMs and their protection ---------------------------------------------------------------
  for (let i = 0; i < HOSTS.length * VMS_PER_HOST; i++) {
    const host = HOSTS[i % HOSTS.length];
    const name = `load-${String(i).padStart(3, '0')}`;
    const content: InitialContent = { kind: 'random', seed: 1000 + i, fill: 1 };
    const facts = await stack.lab.createVm({ name, host, disks: [{ sizeBytes: DISK, content }] });
    const p = await protectVm(stack.client, { server: stack.server.id, vm: { vmId: facts.vmId, name, host, state: 'running' }, dataSource: name, schedule: { everyHours: 24 } });
    vms.push({ facts, ds: p.dataSource, content });
  }

  // ---- everything at once, then again while the first runs are going ----------------------------
  const started = Date.now();
  await Promise.all(vms.map((v) => withRetry('trigger', () => stack.client.schedule.getHandle(scheduleIdOf(v.ds)).trigger(ScheduleOverlapPolicy.SKIP))));
  // Trigger each schedule again the moment its protection is seen running the first backup: the
  // protection skips that run. Once every protection has started, the rest are triggered too (one
  // that finished already lets a second backup start, after it).
  const triggerAgain = (ds: string[]) => Promise.all(ds.map((d) => withRetry('trigger', () => stack.client.schedule.getHandle(scheduleIdOf(d)).trigger(ScheduleOverlapPolicy.SKIP))));
  const again = new Set<string>();
  for (let s = await protectionRuns(); ; s = await protectionRuns()) {
    const now = s.runningNow.filter((d) => !again.has(d));
    for (const d of now) again.add(d);
    await triggerAgain(now);
    if (s.ids.length >= vms.length) break;
    if (Date.now() - started > 120_000) throw new Error(`schedules did not start their runs: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 500));
  }
  await triggerAgain(vms.map((v) => v.ds).filter((d) => !again.has(d)));

  // A backup by hand of a VM whose scheduled backup runs: its protection refuses it up front.
  const refused: string[] = [];
  const manual: Array<{ ds: string; handle: WorkflowHandle }> = [];
  // Asked of VMs whose protection still runs a backup (the first VMs may be done already).
  const busy: typeof vms = [];
  for (const v of vms) {
    if ((await protectionState(stack.client, v.ds)).running) busy.push(v);
    if (busy.length === 4) break;
  }
  for (const v of busy) {
    try {
      manual.push({ ds: v.ds, handle: await startBackupNow(stack.client, { dataSource: v.ds }, 'auto', 'load test') });
    } catch (err) {
      expect(err).toBeInstanceOf(JobRefused);
      expect((err as Error).message).toMatch(/a backup of .* is running on .*one backup, check or original-place restore at a time/);
      refused.push(v.ds);
    }
  }
  expect(refused.length).toBeGreaterThan(0);

  // ---- wait for all of it ------------------------------------------------------------------------
  let state = await protectionRuns();
  for (;;) {
    if (Date.now() - started > 300_000) throw new Error(`backups still running after 300 s: ${JSON.stringify(state)}`);
    await Promise.allSettled(state.ids.map((id) => stack.client.workflow.getHandle(id).result()));
    const again = await protectionRuns();
    const settled = again.running === 0 && again.ids.length === state.ids.length;
    state = again;
    if (settled) break;
    await new Promise((r) => setTimeout(r, 1000));
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
  const byHand = new Set(manual.map((m) => m.handle.workflowId));
  const scheduled = runs.filter((r) => !byHand.has(r.workflowId));

  // Every scheduled backup completed with a point; every VM has one.
  const failed = scheduled.filter((r) => r.outcome !== 'completed');
  expect(failed.map((r) => `${r.workflowId}: ${r.outcome} ${r.failure ?? ''}`)).toEqual([]);
  expect(scheduled.length).toBeGreaterThanOrEqual(vms.length);
  // The second round of triggers came while the first runs were going: skipped, not queued.
  expect(skipped).toBeGreaterThan(0);
  // A backup by hand that was not refused ran after the scheduled one, never beside it (below).
  for (const [i, o] of manualOutcomes.entries()) {
    if (o.status === 'fulfilled') expect((o.value as BackupVmResult).dataSource).toBe(manual[i].ds);
  }

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
  const byDs = new Map<string, ReturnType<typeof jobInterval>[]>();
  for (const r of runs) {
    const iv = jobInterval(r);
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
      `${skipped} triggers skipped (a backup was running), ${refused.length}/${refused.length + manual.length} by-hand backups refused; ` +
      `peak transfers per host ${JSON.stringify(peaks)}`,
  );
}, 480_000);
