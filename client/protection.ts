// Protection of a VM = a long-lived protection workflow per data source (`protection/<ds>`) on
// the queue of the server that owns it, which serialises its jobs; plus a Temporal Schedule
// (`protect/<ds>`) that asks it for express fulls at the given times, and the data source's
// retention in the owner's repository. Backups and checks "now" go through the same protection.
import { within } from '../temporal/within';
import { randomUUID } from 'node:crypto';
import type { Client, ScheduleDescription, ScheduleSpec, WorkflowHandle } from '@temporalio/client';
import type { Duration } from '@temporalio/common';
import { ScheduleOverlapPolicy, ScheduleNotFoundError, WorkflowExecutionAlreadyStartedError, WorkflowUpdateFailedError } from '@temporalio/client';
import { SA } from '../temporal/search-attribute-keys';
import { serverTaskQueue } from '../temporal/task-queues';
import { livePollers } from '../temporal/pollers';
import { describeServerDeployment } from '../temporal/versioning';
import { dailyCalendars } from './schedule-calendar';
import { DEFAULT_RPO_MS, protectionStatus, type ProtectionStatus } from '../protection/status';
import { encryptsPayloads } from '../temporal/connection';
import { ENCRYPTED_MARKER } from '../temporal/search-attribute-redaction';
import type { BackupVmInput } from '../workflows/backup-vm';
import type { FindVmsResult } from '../workflows/find-vm';
import { serverWorkflowId, type ServerRecord } from '../workflows/protection-server';
import {
  moveToUpdate,
  protectionStateQuery,
  protectionWorkflowId,
  setProtectionPolicyUpdate,
  startJobUpdate,
  unprotectUpdate,
  type JobInfo,
  type JobRequest,
  type ProtectionPolicyChange,
  type ProtectionState,
} from '../workflows/protection';
import type { VmSummary } from '../hypervisor/types';
import { UsageError } from './errors';
import { JobFailure, innermostMessage } from '../activities/failures';

export interface ProtectionSchedule {
  /** Express full times of day, "HH:MM" (24 h). */
  at?: string[];
  /** Or every N hours (1–24). */
  everyHours?: number;
  /** IANA zone the times are in (default the owning server's zone). */
  timezone?: string;
  /** Recovery point objective (default the longest gap between runs plus an hour). */
  rpoMs?: number;
}

const HOUR = 3_600_000;

/** The longest time between two runs of a schedule: what the catch-up window and the RPO follow. */
export function longestGapMs(schedule: Pick<ProtectionSchedule, 'at' | 'everyHours'>): number {
  if (schedule.everyHours) return schedule.everyHours * HOUR;
  const minutes = (schedule.at ?? ['02:00']).map((t) => {
    const [h, m] = t.split(':').map(Number);
    return h * 60 + m;
  }).sort((a, b) => a - b);
  let gap = 0;
  for (let i = 0; i < minutes.length; i++) gap = Math.max(gap, ((minutes[(i + 1) % minutes.length] - minutes[i] + 1440 - 1) % 1440) + 1);
  return gap * 60_000;
}

/** A protection's RPO unless one is given: its schedule's longest gap plus an hour. */
export function defaultRpoMs(schedule: Pick<ProtectionSchedule, 'at' | 'everyHours'>): number {
  return longestGapMs(schedule) + HOUR;
}

/** The refusal for a data source no protection (running) answers for. */
function notProtected(dataSource: string): UsageError {
  return new UsageError(`${dataSource} is not protected (\`hvprotect protect list\` shows what is)`);
}

/** Start times spread so hundreds of VMs do not start in one second: a tenth of the gap, at most 30 min. */
export function jitterMs(gapMs: number): number {
  return Math.min(30 * 60_000, Math.floor(gapMs / 10));
}

export interface ProtectOptions {
  vm: VmSummary;
  /** The owner (default: the only server, else the one owning fewest data sources). */
  server?: string;
  dataSource?: string;
  schedule: ProtectionSchedule;
  allowOffline?: boolean;
  offlineMethod?: 'save' | 'pause';
  role?: 'primary' | 'replica';
  /** The protection group that protects it (workflows/protection-group.ts). */
  group?: string;
}

export interface ProtectionInfo {
  dataSource: string;
  /** The server that owns the data source (runs its jobs, keeps its chain). */
  server: string;
  /** Every server that keeps (or kept) a chain of it, oldest first. */
  chains: ProtectionState['chains'];
  running?: JobInfo;
  /** Scheduled runs that found a job of the VM going (counted by the protection). */
  skippedRuns: number;
  /** Scheduled runs Temporal could not start within the catch-up window (Temporal down too long). */
  missedRuns: number;
  group?: string;
  vm: string;
  vmId: string;
  scheduleId: string;
  paused: boolean;
  note?: string;
  spec: string;
  nextRuns: string[];
  recentRuns: { workflowId: string; startedAt: string }[];
  /** Set when the protection did not answer (its server is down or busy): `running` and the runs are not known. */
  unanswered?: string;
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

/** Every VM on the hosts whose agents answer, asked through the server of `taskQueue` (the findVms workflow). */
export function findAllVms(client: Client, taskQueue: string, label = ''): Promise<FindVmsResult> {
  return client.workflow.execute('findVms', {
    taskQueue,
    workflowId: `find-vms/${label}${randomUUID()}`,
    args: [{}],
    workflowExecutionTimeout: '2 minutes',
  });
}

/**
 * Finds a VM by name or id on the hosts whose agents run, asked through `server` (default any
 * running server); an unknown one lists close names.
 */
export async function resolveVm(client: Client, vm: string, server?: string): Promise<VmSummary> {
  const found = await findAllVms(client, server ? serverTaskQueue(await chooseServer(client, server)) : (await anyRunningServer(client)).taskQueue);
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
  const server = await chooseServer(client, o.server);
  const timezone = o.schedule.timezone ?? (await serverTimeZone(client, server)) ?? 'UTC';
  checkTimeZone(timezone);
  const { spec, catchupWindow } = scheduleTiming(o.schedule, timezone);
  const state: ProtectionState = {
    dataSource,
    vm: o.vm.name,
    vmId: o.vm.vmId,
    server,
    backup: backupInput(dataSource, o.vm, o),
    chains: [{ server, since: new Date().toISOString() }],
    recent: [],
    skippedRuns: 0,
    rpoMs: o.schedule.rpoMs ?? defaultRpoMs(o.schedule),
    ...(o.group ? { group: o.group } : {}),
  };
  // Search attributes and a schedule's note are stored in plain text: with a payload codec, no VM name there.
  const vmInPlainText = encryptsPayloads(client) ? ENCRYPTED_MARKER : o.vm.name;
  try {
    await client.workflow.start('protection', {
      workflowId: protectionWorkflowId(dataSource),
      taskQueue: serverTaskQueue(server),
      args: [state],
      staticSummary: `protection of ${o.vm.name} by ${server}`,
      memo: { vm: o.vm.name, vmId: o.vm.vmId, dataSource, server, ...(o.group ? { group: o.group } : {}) },
      typedSearchAttributes: [
        { key: SA.dataSource, value: dataSource },
        { key: SA.vm, value: vmInPlainText },
        { key: SA.server, value: server },
      ],
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new UsageError(`${o.vm.name} is already protected as data source ${dataSource} (${protectionWorkflowId(dataSource)}); remove it first or pick --data-source`);
    }
    throw err;
  }
  try {
    await client.schedule.create({
      scheduleId: scheduleIdOf(dataSource),
      spec,
      action: scheduleAction(dataSource, o.vm.name, server, vmInPlainText),
      // The protection skips a run that finds a job going; the schedule need not start two either.
      policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow, pauseOnFailure: false },
      memo: { vm: o.vm.name, vmId: o.vm.vmId, dataSource },
      typedSearchAttributes: [
        { key: SA.dataSource, value: dataSource },
        { key: SA.vm, value: vmInPlainText },
      ],
      state: { note: vmInPlainText === o.vm.name ? `protection of ${o.vm.name} (${o.vm.vmId})` : `protection of ${dataSource}` },
    });
  } catch (err) {
    if ((err as Error).name !== 'ScheduleAlreadyRunning') throw err;
  }
  return describeProtection(client, dataSource);
}

function scheduleAction(dataSource: string, vm: string, server: string, vmInPlainText = vm) {
  return {
    type: 'startWorkflow' as const,
    workflowType: 'scheduledBackup',
    taskQueue: serverTaskQueue(server),
    workflowId: `scheduled/${dataSource}`,
    args: [{ dataSource }],
    staticSummary: `scheduled backup of ${vm}`,
    typedSearchAttributes: [
      { key: SA.dataSource, value: dataSource },
      { key: SA.vm, value: vmInPlainText },
    ],
  };
}

// ---- servers ---------------------------------------------------------------------------------

export interface ServerStatus extends ServerRecord {
  running: boolean;
  /** Poller identities on its queue that belong to another repository (two servers with one id). */
  foreignPollers: string[];
  dataSources: string[];
}

/** Which server owns which data sources (from the protections' memos). */
export async function protectionOwners(client: Client): Promise<Map<string, string[]>> {
  const owned = new Map<string, string[]>();
  for await (const wf of client.workflow.list({ query: "WorkflowType = 'protection' AND ExecutionStatus = 'Running'" })) {
    const m = (await wf.memo) as { server?: string; dataSource?: string } | undefined;
    if (m?.server && m.dataSource) owned.set(m.server, [...(owned.get(m.server) ?? []), m.dataSource]);
  }
  return owned;
}

/** Every protection server whose record is open (started and not stopped), whether it polls now, and what it owns. */
export async function listServers(client: Client): Promise<ServerStatus[]> {
  const owned = await protectionOwners(client);
  const out: ServerStatus[] = [];
  for await (const wf of client.workflow.list({ query: "WorkflowType = 'protectionServer' AND ExecutionStatus = 'Running'" })) {
    const r = ((await wf.memo) ?? {}) as unknown as ServerRecord;
    if (!r.id) continue;
    const pollers = await livePollers(client, client.options.namespace, r.taskQueue).catch(() => []);
    const ids = [...new Set(pollers.map((p) => p.identity))];
    // A server that stops ends its record; one that died leaves it, and its pollers age out in a minute.
    out.push({
      ...r,
      running: ids.some((i) => i.startsWith(`${r.id}/${r.repositoryId}@`)),
      foreignPollers: ids.filter((i) => !i.startsWith(`${r.id}/${r.repositoryId}@`)),
      dataSources: (owned.get(r.id) ?? []).sort(),
    });
  }
  return out.sort((a, b) => a.id.localeCompare(b.id));
}

/** The server a new protection goes to: the one asked for, the only one, or the one owning fewest. */
export async function chooseServer(client: Client, requested?: string): Promise<string> {
  if (requested) {
    // Its record, read directly: the list below comes from visibility, which can lag a server
    // that has just started (seen in CI: a test's own server, started a moment before, not listed).
    const record = await client.workflow.getHandle(serverWorkflowId(requested)).describe().catch(() => undefined);
    if (record?.status.name === 'RUNNING') return requested;
  }
  const servers = await listServers(client);
  if (requested) {
    if (!servers.some((s) => s.id === requested)) {
      throw new UsageError(`no protection server ${requested}${servers.length ? `; servers: ${servers.map((s) => s.id).join(', ')}` : ': start one with `hvprotect server --id ' + requested + '`'}`);
    }
    return requested;
  }
  const running = servers.filter((s) => s.running);
  if (running.length === 0) throw new UsageError('no protection server is running: start one with `hvprotect server` (or `npm start`)');
  return running.sort((a, b) => a.dataSources.length - b.dataSources.length || a.id.localeCompare(b.id))[0].id;
}

/** Some running server, for jobs that any server can do (finding VMs, the self-check). */
export async function anyRunningServer(client: Client): Promise<ServerStatus> {
  // Visibility can lag a server that has just started (seen in CI with two suites at once): a few
  // seconds' grace before saying none runs.
  for (const deadline = Date.now() + 5_000; ; await new Promise((r) => setTimeout(r, 500))) {
    // The newest record first: a server that died keeps looking alive while its pollers age out.
    const running = (await listServers(client)).filter((s) => s.running).sort((a, b) => b.startedAt.localeCompare(a.startedAt));
    if (running.length) return running[0];
    if (Date.now() > deadline) throw new UsageError('no protection server is running: start one with `hvprotect server` (or `npm start`)');
  }
}

/**
 * A protection's schedule spec and catch-up window: times in the zone (with the spring-forward
 * days' runs, schedule-calendar.ts), each run started up to a bounded jitter late so hundreds of
 * VMs do not start in one second; a run missed while the server or Temporal was down is caught up
 * within one whole gap (a server down overnight backs up when it returns, not the next night).
 */
export function scheduleTiming(schedule: Pick<ProtectionSchedule, 'at' | 'everyHours'>, timezone: string): { spec: ScheduleSpec; catchupWindow: number } {
  const gapMs = longestGapMs(schedule);
  const times: ScheduleSpec = schedule.everyHours
    ? { intervals: [{ every: `${schedule.everyHours} hours` as Duration }] }
    : { calendars: dailyCalendars(schedule.at ?? ['02:00'], timezone) };
  return { spec: { ...times, timezone, jitter: jitterMs(gapMs) }, catchupWindow: gapMs };
}

/** Gives an existing protection's schedule new times (a protection group's policy changed). */
export async function retimeProtection(client: Client, dataSource: string, schedule: Pick<ProtectionSchedule, 'at' | 'everyHours' | 'timezone'>, server: string): Promise<void> {
  const timezone = schedule.timezone ?? (await serverTimeZone(client, server)) ?? 'UTC';
  const { spec, catchupWindow } = scheduleTiming(schedule, timezone);
  await client.schedule.getHandle(scheduleIdOf(dataSource)).update((prev) => ({ ...prev, spec, policies: { ...prev.policies, catchupWindow } }));
}

/**
 * Changes a protection's RPO and offline policy (what is given; the rest stays). The status is
 * judged against the new RPO at once; the next job backs up with the new offline policy.
 */
export async function setProtectionPolicy(client: Client, dataSource: string, change: Omit<ProtectionPolicyChange, 'by'>, by = 'cli'): Promise<ProtectionState> {
  return client.workflow
    .getHandle(protectionWorkflowId(dataSource))
    .executeUpdate(setProtectionPolicyUpdate, { args: [{ ...change, by }] })
    .catch((err) => {
      if ((err as Error).name === 'WorkflowNotFoundError') throw notProtected(dataSource);
      throw refusal(err);
    });
}

/** The zone a server runs in, from its record (absent for servers before it was recorded). */
async function serverTimeZone(client: Client, server: string): Promise<string | undefined> {
  const d = await client.workflow.getHandle(serverWorkflowId(server)).describe().catch(() => undefined);
  return (((await d?.memo) ?? {}) as Partial<ServerRecord>).timeZone;
}

export function checkTimeZone(zone: string): void {
  try {
    new Intl.DateTimeFormat('en', { timeZone: zone });
  } catch {
    throw new UsageError(`unknown time zone "${zone}": use an IANA name such as Europe/Berlin, America/New_York or UTC`);
  }
}

function specText(d: ScheduleDescription): string {
  // The one-day calendars of spring-forward days (schedule-calendar.ts) are not the schedule's times.
  const cal = d.spec.calendars?.filter((c) => !/clocks go forward/.test(c.comment ?? '')).map((c) => {
    const h = c.hour?.[0]?.start ?? 0;
    const m = c.minute?.[0]?.start ?? 0;
    return `${String(h).padStart(2, '0')}:${String(m).padStart(2, '0')}`;
  });
  const jitter = Number(d.spec.jitter ?? 0);
  const spread = jitter ? `, started within ${Math.round(jitter / 60_000)} min` : '';
  if (cal?.length) return `daily at ${cal.join(', ')} ${d.spec.timezone ?? 'UTC'}${spread}`;
  const iv = d.spec.intervals?.[0];
  if (iv) return `every ${Math.round(Number(iv.every) / 3_600_000)} h${spread}`;
  return 'custom';
}

/**
 * gRPC codes that asking again cannot change: a refusal of this caller (permissions, credentials,
 * a malformed request, a server without the call) and UNAVAILABLE, which the connection's retry
 * (temporal/grpc-retry.ts) has already retried before it reached here.
 */
const FINAL_DESCRIBE_CODES = new Set([3 /* INVALID_ARGUMENT */, 7 /* PERMISSION_DENIED */, 12 /* UNIMPLEMENTED */, 14 /* UNAVAILABLE */, 16 /* UNAUTHENTICATED */]);

/** The gRPC status code somewhere in an error's cause chain. */
function grpcCodeOf(err: unknown): number | undefined {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, i = 0; e && i < 6; e = e.cause as typeof e, i++) {
    if (typeof e.code === 'number') return e.code;
  }
  return undefined;
}

/**
 * A schedule's description, undefined when it does not exist. Temporal answers a schedule's
 * describe by querying the schedule's own workflow, a query that can fail for a moment (that
 * workflow has not run its first task yet, or the query timed out on a busy server). Seen once
 * (2 Dec, a CI run under load): `npm start` exited with "Failed to describe schedule", Temporal's
 * reason not shown; quiet tries (30 schedules described right after creation, and right after a
 * Temporal restart) did not reproduce it. So such failures are asked again for up to `waitMs`, and
 * the error then says what Temporal answered; refusals that cannot pass (FINAL_DESCRIBE_CODES)
 * are said at once.
 */
export async function describeScheduleWhenReady(
  describe: () => Promise<ScheduleDescription>,
  scheduleId: string,
  waitMs = 20_000,
  sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
): Promise<ScheduleDescription | undefined> {
  const deadline = Date.now() + waitMs;
  for (let delay = 100; ; delay = Math.min(2_000, delay * 2)) {
    try {
      return await describe();
    } catch (err) {
      if (err instanceof ScheduleNotFoundError) return undefined;
      const code = grpcCodeOf(err);
      if (code !== undefined && FINAL_DESCRIBE_CODES.has(code)) {
        throw new Error(`schedule ${scheduleId} could not be described: ${innermostMessage(err)}`, { cause: err });
      }
      if (Date.now() + delay > deadline) {
        throw new Error(`schedule ${scheduleId} did not answer within ${Math.round(waitMs / 1000)} s: ${innermostMessage(err)}; \`hvprotect doctor\` shows whether Temporal is up`, { cause: err });
      }
      await sleep(delay);
    }
  }
}

export async function describeProtection(client: Client, dataSource: string): Promise<ProtectionInfo> {
  const state = await protectionState(client, dataSource);
  const scheduleId = scheduleIdOf(dataSource);
  const handle = client.schedule.getHandle(scheduleId);
  const d = await describeScheduleWhenReady(() => handle.describe(), scheduleId);
  return {
    dataSource,
    server: state.server,
    chains: state.chains,
    running: state.running,
    skippedRuns: state.skippedRuns,
    missedRuns: d?.info.numActionsMissedCatchupWindow ?? 0,
    ...(state.group ? { group: state.group } : {}),
    vm: state.vm,
    vmId: state.vmId,
    scheduleId,
    paused: d?.state.paused ?? false,
    note: d?.state.note,
    spec: d ? specText(d) : 'no schedule',
    nextRuns: d ? d.info.nextActionTimes.slice(0, 3).map((t) => t.toISOString()) : [],
    recentRuns: state.recent.filter((r) => r.outcome !== 'skipped').slice(-5).map((r) => ({ workflowId: r.workflowId, startedAt: r.startedAt })),
    ...(state.unanswered ? { unanswered: state.unanswered } : {}),
  };
}

/**
 * A protection's state as the client saw it. `unanswered` says why only its memo is known (its
 * server did not answer the query): then nothing of its jobs or points is known, not "none".
 */
export type ProtectionView = ProtectionState & { unanswered?: string };

/**
 * A query given `ms` to answer. The RPC itself ends then (a gRPC deadline): a query left behind
 * would go on retrying after its caller gave up, into a connection closed meanwhile.
 */
async function boundedQuery<T>(client: Client, query: () => Promise<T>, ms: number): Promise<T> {
  const deadline = Date.now() + ms;
  try {
    return await within(client.withDeadline(deadline, query), ms + 1_000);
  } catch (err) {
    // Ran out its time: said the same way at every ask, whether grpc-js reported the deadline as
    // DEADLINE_EXCEEDED or, when it fired between retries, as CANCELLED.
    if (Date.now() >= deadline - 50 || /DEADLINE_EXCEEDED/.test(innermostMessage(err))) throw new Error(`no answer within ${ms / 1000} s`);
    throw err;
  }
}

/** How long the protection's owner gets to answer the state query before the memo stands in. */
const STATE_QUERY_MS = 5_000;

/** The protection's state: by query when its owner runs, else what its memo says (marked `unanswered`). */
export async function protectionState(client: Client, dataSource: string): Promise<ProtectionView> {
  const handle = client.workflow.getHandle(protectionWorkflowId(dataSource));
  let described;
  try {
    described = await handle.describe();
  } catch (err) {
    if ((err as Error).name === 'WorkflowNotFoundError') throw notProtected(dataSource);
    throw err;
  }
  if (described.status.name !== 'RUNNING') throw notProtected(dataSource);
  try {
    return await boundedQuery(client, () => handle.query(protectionStateQuery), STATE_QUERY_MS);
  } catch (err) {
    const m = ((await described.memo) ?? {}) as { vm?: string; vmId?: string; server?: string };
    const server = m.server ?? '?';
    return {
      dataSource, vm: m.vm ?? '?', vmId: m.vmId ?? '?', server, backup: { dataSource, vm: m.vmId ?? dataSource }, chains: [], recent: [], skippedRuns: 0,
      unanswered:
        `its protection did not answer its state query (${innermostMessage(err)}): its server ${server} is down or too busy, ` +
        `so its jobs and recovery points are not known here; \`hvprotect doctor\` shows whether ${server} runs`,
    };
  }
}

/** The data sources whose protection `serverId` owns, as visibility lists them. */
export async function ownedDataSources(client: Client, serverId: string): Promise<string[]> {
  const out: string[] = [];
  for await (const wf of client.workflow.list({ query: `WorkflowType = 'protection' AND ExecutionStatus = 'Running' AND BackupServer = '${serverId}'` })) {
    out.push(wf.workflowId.slice('protection/'.length));
  }
  return out;
}

/**
 * A protection's state, when `serverId` owns it (its own record says so, whatever visibility
 * lists); undefined when another server owns it or it does not answer (within `ms`, when given).
 */
export async function ownedProtectionState(client: Client, serverId: string, dataSource: string, ms?: number): Promise<ProtectionState | undefined> {
  const query = () => client.workflow.getHandle(protectionWorkflowId(dataSource)).query(protectionStateQuery);
  const state = (await (ms === undefined ? query() : boundedQuery(client, query, ms)).catch(() => undefined)) as ProtectionState | undefined;
  return state?.server === serverId ? state : undefined;
}

export interface ProtectionStatusRow extends ProtectionStatus {
  vm: string;
  server: string;
  paused: boolean;
}

/**
 * Every protected VM against its RPO, from each protection's own record (its state query, which
 * the workflow answers from durable state); the list of protections alone comes from visibility.
 */
export async function protectionStatuses(client: Client, now = new Date()): Promise<ProtectionStatusRow[]> {
  const rows: ProtectionStatusRow[] = [];
  for await (const wf of client.workflow.list({ query: "WorkflowType = 'protection' AND ExecutionStatus = 'Running'" })) {
    const dataSource = wf.workflowId.slice('protection/'.length);
    const state = await protectionState(client, dataSource);
    const paused = await client.schedule.getHandle(scheduleIdOf(dataSource)).describe().then((d) => d.state.paused, () => false);
    // Unknown is not OK: without the protection's record its last good point cannot be vouched for.
    const status: ProtectionStatus = state.unanswered
      ? { dataSource, level: 'WARNING', reason: state.unanswered, rpoSeconds: Math.round((state.rpoMs ?? DEFAULT_RPO_MS) / 1000), checkNeeded: false }
      : protectionStatus(state, now);
    rows.push({ ...status, vm: state.vm, server: state.server, paused });
  }
  const order = { CRITICAL: 0, WARNING: 1, OK: 2 };
  return rows.sort((a, b) => order[a.level] - order[b.level] || a.vm.localeCompare(b.vm));
}

export async function listProtections(client: Client): Promise<ProtectionInfo[]> {
  const out: ProtectionInfo[] = [];
  for await (const wf of client.workflow.list({ query: "WorkflowType = 'protection' AND ExecutionStatus = 'Running'" })) {
    out.push(await describeProtection(client, wf.workflowId.slice('protection/'.length)));
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
  const known = await describeProtection(client, dataSource).then(
    () => true,
    (err) => {
      if (err instanceof UsageError) return false;
      throw err;
    },
  );
  // The protection first: a refusal (a job runs) leaves the schedule as it was.
  if (known) {
    await askProtection(client, dataSource, (attempt) =>
      client.workflow.getHandle(protectionWorkflowId(dataSource)).executeUpdate(unprotectUpdate, { args: [{ by: 'cli' }], updateId: attemptId(randomUUID(), attempt) }),
    );
  }
  // Also the schedule of a protection that has ended already (a remove cut short after its first step).
  const deleted = await client.schedule.getHandle(scheduleIdOf(dataSource)).delete().then(
    () => true,
    (err) => {
      if (!(err instanceof ScheduleNotFoundError)) throw err;
      return false;
    },
  );
  if (!known && !deleted) throw notProtected(dataSource);
}

/** Hands a data source to another server: its next backup starts a chain there. */
export async function moveProtection(client: Client, dataSource: string, to: string): Promise<ProtectionInfo> {
  const before = await describeProtection(client, dataSource);
  if (before.server === to) throw new UsageError(`${dataSource} is already protected by ${to}`);
  const target = (await listServers(client)).find((s) => s.id === to);
  if (!target) throw new UsageError(`no protection server ${to}: \`hvprotect doctor\` lists the servers`);
  if (!target.running) throw new UsageError(`protection server ${to} is not running: start it first (\`hvprotect server --id ${to}\`)`);
  const moveId = randomUUID();
  await askProtection(client, dataSource, (attempt) =>
    client.workflow.getHandle(protectionWorkflowId(dataSource)).executeUpdate(moveToUpdate, { args: [{ to, by: 'cli' }], updateId: attemptId(moveId, attempt) }),
  );
  await client.schedule.getHandle(scheduleIdOf(dataSource)).update((prev) => ({ ...prev, action: { ...prev.action, taskQueue: serverTaskQueue(to) } })).catch((err) => {
    if (!(err instanceof ScheduleNotFoundError)) throw err;
  });
  // The move continues the protection on the new owner's queue: wait until it answers there.
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 200))) {
    const info = await describeProtection(client, dataSource).catch(() => undefined);
    if (info?.server === to) return info;
  }
  return describeProtection(client, dataSource);
}

/** A refused update, as one clear line. */
function refusal(err: unknown): Error {
  if (err instanceof WorkflowUpdateFailedError) {
    const cause = err.cause as { message?: string; type?: string; details?: unknown[] } | undefined;
    const running = cause?.type === JobFailure.JobAlreadyRunning ? (cause.details?.[0] as JobInfo | undefined) : undefined;
    return new JobRefused(cause?.message ?? err.message, cause?.type, running?.workflowId ? running : undefined);
  }
  return err as Error;
}

export class JobRefused extends Error {
  override name = 'JobRefused';
  /** The refusal's type (JobFailure), and for JobAlreadyRunning the job it named. */
  constructor(message: string, readonly type?: string, readonly running?: JobInfo) {
    super(message);
  }
}

/** How long a protection may take to record that its job has ended before a refusal naming that job stands. */
const CATCH_UP_MS = 30_000;

/**
 * Sends an update to a protection. The protection learns that its job has ended in a workflow
 * task of its own, after the job's result is out: "backup now" (or remove, or move) asked right
 * after a backup's result can be refused naming the job that has just ended. Such a refusal is
 * not the answer: while the job it names has closed, ask again (a fresh update id each time,
 * so the server does not hand back the refusal) until the protection has caught up.
 */
async function askProtection<T>(client: Client, dataSource: string, send: (attempt: number) => Promise<T>): Promise<T> {
  const deadline = Date.now() + CATCH_UP_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      return await send(attempt);
    } catch (err) {
      const refused = refusal(err);
      const named = refused instanceof JobRefused ? refused.running : undefined;
      if (!named || Date.now() > deadline || !(await hasClosed(client, named.workflowId))) throw refused;
      await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** attempt)));
    }
  }
}

function attemptId(id: string, attempt: number): string {
  return attempt ? `${id}/${attempt}` : id;
}

async function hasClosed(client: Client, workflowId: string): Promise<boolean> {
  try {
    return (await client.workflow.getHandle(workflowId).describe()).status.name !== 'RUNNING';
  } catch (err) {
    // A job that was never recorded is not running either; anything else leaves the refusal as it is.
    return (err as Error).name === 'WorkflowNotFoundError';
  }
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

/** Asks the protection for a job now; refused (JobRefused) when one of the data source runs. */
export async function startJob(client: Client, dataSource: string, req: JobRequest): Promise<{ job: JobInfo; handle: WorkflowHandle }> {
  await refuseWhileDraining(client, dataSource);
  const requestId = req.requestId ?? randomUUID();
  const request = { ...req, requestId, requestedAt: req.requestedAt ?? new Date().toISOString() };
  const job = await askProtection(client, dataSource, (attempt) =>
    client.workflow.getHandle(protectionWorkflowId(dataSource)).executeUpdate(startJobUpdate, { args: [request], updateId: attemptId(requestId, attempt) }),
  );
  return { job, handle: client.workflow.getHandle(job.workflowId) };
}

/**
 * A drained server runs no new work until a build of it starts (README: Upgrading): a job asked
 * for now would wait for that, so say so instead of waiting.
 */
async function refuseWhileDraining(client: Client, dataSource: string): Promise<void> {
  const described = await client.workflow.getHandle(protectionWorkflowId(dataSource)).describe().catch(() => undefined);
  const server = (((await described?.memo) ?? {}) as { server?: string }).server;
  if (!server) return;
  const deployment = await describeServerDeployment(client, client.options.namespace, server).catch(() => undefined);
  if (deployment && deployment.versions.length && !deployment.currentBuildId) {
    throw new UsageError(
      `protection server ${server} is drained for an upgrade: no job starts on it until a build of it starts ` +
        `(or \`hvprotect upgrade resume --server ${server}\` ends the drain); nothing was started`,
    );
  }
}

/** Starts a backup (or consistency check) now, through the protection. */
export async function startBackupNow(client: Client, p: Pick<ProtectionInfo, 'dataSource'>, kind: 'auto' | 'consistency-check' = 'auto', by = 'cli'): Promise<WorkflowHandle> {
  return (await startJob(client, p.dataSource, { kind: kind === 'consistency-check' ? 'check' : 'backup', by })).handle;
}
