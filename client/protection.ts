// Protection of a VM = a Temporal Schedule per data source that starts backupVm (express full at
// the given times, or every N hours), with an overlap policy that never runs two at once; plus
// the data source's retention in the repository. Backups "now" and consistency checks are the
// same workflow started by hand, with readable ids.
import { randomUUID } from 'node:crypto';
import type { Client, ScheduleDescription, ScheduleSpec, WorkflowHandle } from '@temporalio/client';
import type { Duration } from '@temporalio/common';
import { ScheduleOverlapPolicy, ScheduleNotFoundError } from '@temporalio/client';
import { SA } from '../temporal/search-attribute-keys';
import { SERVER_TASK_QUEUE } from '../temporal/task-queues';
import type { BackupVmInput } from '../workflows/backup-vm';
import type { FindVmsResult } from '../workflows/find-vm';
import type { VmSummary } from '../hypervisor/types';
import { UsageError } from './errors';

export interface ProtectionSchedule {
  /** Express full times of day, "HH:MM" (24 h). */
  at?: string[];
  /** Or every N hours (1–24). */
  everyHours?: number;
  timezone?: string;
}

export interface ProtectOptions {
  vm: VmSummary;
  dataSource?: string;
  schedule: ProtectionSchedule;
  allowOffline?: boolean;
  offlineMethod?: 'save' | 'pause';
  role?: 'primary' | 'replica';
}

export interface ProtectionInfo {
  dataSource: string;
  vm: string;
  vmId: string;
  scheduleId: string;
  paused: boolean;
  note?: string;
  spec: string;
  nextRuns: string[];
  recentRuns: { workflowId: string; startedAt: string }[];
}

const SCHEDULE_PREFIX = 'protect/';
const TIME = /^([01]?\d|2[0-3]):([0-5]\d)$/;

export function scheduleIdOf(dataSource: string): string {
  return `${SCHEDULE_PREFIX}${dataSource}`;
}

/** A data source id from a VM name: what the repository accepts, readable in the Web UI. */
export function dataSourceIdFor(vmName: string): string {
  const id = vmName.toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[^a-z0-9]+/, '').slice(0, 64).replace(/[-.]+$/, '');
  return id || `vm-${randomUUID().slice(0, 8)}`;
}

export function parseTimes(value: string): string[] {
  const times = value.split(',').map((t) => t.trim()).filter(Boolean);
  if (times.length === 0 || times.some((t) => !TIME.test(t))) {
    throw new UsageError(`--at ${value}: give times of day as HH:MM[,HH:MM…] in 24-hour form, e.g. --at 02:00 or --at 08:00,20:00`);
  }
  return times;
}

/** Levenshtein distance, for "did you mean". */
function distance(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0];
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j];
      dp[j] = Math.min(dp[j] + 1, dp[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return dp[b.length];
}

export function closeNames(name: string, candidates: string[], max = 3): string[] {
  const n = name.toLowerCase();
  return candidates
    .map((c) => ({ c, d: c.toLowerCase().includes(n) || n.includes(c.toLowerCase()) ? 0 : distance(n, c.toLowerCase()) }))
    .filter((x) => x.d <= Math.max(2, Math.floor(n.length / 3)))
    .sort((a, b) => a.d - b.d)
    .slice(0, max)
    .map((x) => x.c);
}

export class UnknownVm extends Error {
  override name = 'UnknownVm';
}

/** Finds a VM by name or id on the hosts whose agents run; an unknown one lists close names. */
export async function resolveVm(client: Client, vm: string): Promise<VmSummary> {
  const found: FindVmsResult = await client.workflow.execute('findVms', {
    taskQueue: SERVER_TASK_QUEUE,
    workflowId: `find-vms/${randomUUID()}`,
    args: [{}],
    workflowExecutionTimeout: '2 minutes',
  });
  const exact = found.vms.filter((v) => v.vmId === vm || v.name === vm);
  const match = exact.length ? exact : found.vms.filter((v) => v.name.toLowerCase() === vm.toLowerCase());
  // The same VM id on two hosts is a Hyper-V Replica pair: the primary is the one meant.
  const primary = match.find((v) => v.host) ?? match[0];
  if (primary) return primary;
  const close = closeNames(vm, [...new Set(found.vms.map((v) => v.name))]);
  const silent = found.silentHosts.length ? ` (no answer from host(s) ${found.silentHosts.join(', ')})` : '';
  throw new UnknownVm(
    `no VM named "${vm}" on any host with a running agent${silent}` +
      (close.length ? `; did you mean ${close.map((c) => `"${c}"`).join(' or ')}?` : found.vms.length ? `; VMs: ${found.vms.map((v) => v.name).slice(0, 10).join(', ')}` : ''),
  );
}

export function backupInput(dataSource: string, vm: VmSummary, o: Pick<ProtectOptions, 'allowOffline' | 'offlineMethod' | 'role'>): BackupVmInput {
  return {
    dataSource,
    vm: vm.vmId,
    role: o.role,
    policy: { allowOffline: o.allowOffline, offlineMethod: o.offlineMethod },
  };
}

export async function protectVm(client: Client, o: ProtectOptions): Promise<ProtectionInfo> {
  const dataSource = o.dataSource ?? dataSourceIdFor(o.vm.name);
  const scheduleId = scheduleIdOf(dataSource);
  const spec: ScheduleSpec = o.schedule.everyHours
    ? { intervals: [{ every: `${o.schedule.everyHours} hours` as Duration }] }
    : {
        calendars: (o.schedule.at ?? ['02:00']).map((t) => {
          const [hour, minute] = t.split(':').map(Number);
          return { hour, minute, comment: `express full at ${t}` };
        }),
      };
  try {
    await client.schedule.create({
      scheduleId,
      spec: { ...spec, timezone: o.schedule.timezone },
      action: {
        type: 'startWorkflow',
        workflowType: 'backupVm',
        taskQueue: SERVER_TASK_QUEUE,
        workflowId: `backup/${dataSource}`,
        args: [backupInput(dataSource, o.vm, o)],
        staticSummary: `scheduled backup of ${o.vm.name}`,
        typedSearchAttributes: [
          { key: SA.dataSource, value: dataSource },
          { key: SA.vm, value: o.vm.name },
        ],
      },
      // Never two backups of one VM: a run still going makes the next one skip.
      policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1 hour', pauseOnFailure: false },
      memo: { vm: o.vm.name, vmId: o.vm.vmId, dataSource },
      typedSearchAttributes: [
        { key: SA.dataSource, value: dataSource },
        { key: SA.vm, value: o.vm.name },
      ],
      state: { note: `protection of ${o.vm.name} (${o.vm.vmId})` },
    });
  } catch (err) {
    if ((err as Error).name === 'ScheduleAlreadyRunning') {
      throw new UsageError(`${o.vm.name} is already protected as data source ${dataSource} (schedule ${scheduleId}); remove it first or pick --data-source`);
    }
    throw err;
  }
  return describeProtection(client, dataSource);
}

function specText(d: ScheduleDescription): string {
  const cal = d.spec.calendars?.map((c) => {
    const h = c.hour?.[0]?.start ?? 0;
    const m = c.minute?.[0]?.start ?? 0;
    return `${String(h).padStart(2, '0')}:${String(m).padStart(2, '0')}`;
  });
  if (cal?.length) return `daily at ${cal.join(', ')}`;
  const iv = d.spec.intervals?.[0];
  if (iv) return `every ${Math.round(Number(iv.every) / 3_600_000)} h`;
  return 'custom';
}

export async function describeProtection(client: Client, dataSource: string): Promise<ProtectionInfo> {
  const h = client.schedule.getHandle(scheduleIdOf(dataSource));
  let d: ScheduleDescription;
  try {
    d = await h.describe();
  } catch (err) {
    if (err instanceof ScheduleNotFoundError) throw new UsageError(`${dataSource} is not protected (\`hvprotect protect list\` shows what is)`);
    throw err;
  }
  const memo = (d.memo ?? {}) as { vm?: string; vmId?: string };
  return {
    dataSource,
    vm: memo.vm ?? '?',
    vmId: memo.vmId ?? '?',
    scheduleId: d.scheduleId,
    paused: d.state.paused,
    note: d.state.note,
    spec: specText(d),
    nextRuns: d.info.nextActionTimes.slice(0, 3).map((t) => t.toISOString()),
    recentRuns: d.info.recentActions.slice(-5).map((a) => ({ workflowId: a.action.workflow.workflowId, startedAt: a.takenAt.toISOString() })),
  };
}

export async function listProtections(client: Client): Promise<ProtectionInfo[]> {
  const out: ProtectionInfo[] = [];
  for await (const s of client.schedule.list()) {
    if (!s.scheduleId.startsWith(SCHEDULE_PREFIX)) continue;
    out.push(await describeProtection(client, s.scheduleId.slice(SCHEDULE_PREFIX.length)));
  }
  return out.sort((a, b) => a.dataSource.localeCompare(b.dataSource));
}

export async function setProtectionPaused(client: Client, dataSource: string, paused: boolean, note: string): Promise<ProtectionInfo> {
  await describeProtection(client, dataSource); // clear error when unknown
  const h = client.schedule.getHandle(scheduleIdOf(dataSource));
  if (paused) await h.pause(note);
  else await h.unpause(note);
  return describeProtection(client, dataSource);
}

export async function removeProtection(client: Client, dataSource: string): Promise<void> {
  await describeProtection(client, dataSource);
  await client.schedule.getHandle(scheduleIdOf(dataSource)).delete();
}

/** Finds the data source protecting a VM (by data source id, VM name or VM id). */
export async function dataSourceOf(client: Client, vmOrDs: string): Promise<ProtectionInfo> {
  // Most often the name is the data source id: one describe, not a describe of every schedule.
  const direct = await describeProtection(client, vmOrDs).catch(() => undefined);
  if (direct) return direct;
  const all = await listProtections(client);
  const hit = all.find((p) => p.dataSource === vmOrDs || p.vm === vmOrDs || p.vmId === vmOrDs);
  if (hit) return hit;
  const close = closeNames(vmOrDs, [...all.map((p) => p.vm), ...all.map((p) => p.dataSource)]);
  throw new UsageError(
    `"${vmOrDs}" is not a protected VM` +
      (close.length ? `; did you mean ${[...new Set(close)].map((c) => `"${c}"`).join(' or ')}?` : all.length ? `; protected: ${all.map((p) => p.vm).join(', ')}` : '; protect it first: hvprotect protect add VM'),
  );
}

/** Starts a backup (or consistency check) now, with the schedule's own input. */
export async function startBackupNow(client: Client, p: ProtectionInfo, kind: 'auto' | 'consistency-check' = 'auto'): Promise<WorkflowHandle> {
  const d = await client.schedule.getHandle(p.scheduleId).describe();
  const action = d.action as { args?: unknown[] };
  const input = { ...(action.args?.[0] as BackupVmInput), kind };
  const verb = kind === 'consistency-check' ? 'check' : 'backup';
  return client.workflow.start('backupVm', {
    taskQueue: SERVER_TASK_QUEUE,
    workflowId: `${verb}/${p.dataSource}/${new Date().toISOString()}`,
    args: [input],
    staticSummary: `${kind === 'consistency-check' ? 'consistency check' : 'backup'} of ${p.vm} (started from the CLI)`,
    typedSearchAttributes: [
      { key: SA.dataSource, value: p.dataSource },
      { key: SA.vm, value: p.vm },
    ],
  });
}
