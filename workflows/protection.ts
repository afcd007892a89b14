// protection: one long-lived workflow per protected data source (`protection/<ds>`), the way DPM
// keeps a data source in a protection group on one protection server.
//
//   owner    which protection server keeps the chain and runs the jobs (memo + BackupServer)
//   jobs     one backup, consistency check or original-place restore at a time, whoever asks:
//            the startJob update's validator refuses a second one up front, naming the first
//   schedule the Temporal Schedule `protect/<ds>` starts scheduledBackup, which signals here;
//            a run that finds a job going is counted as skipped
//   move     moveTo hands the data source to another server: its next backup starts a new chain
//            there; the old chain stays on the old server until its retention lets it go
//   policy   setPolicy changes the RPO and the offline policy (a group's `group set`): the status
//            is judged against the new RPO at once, the next job backs up with the new policy
//
// It runs on its owner's task queue, continues as new (state carried) before its history grows
// long, and never while a job or handler is in flight.
import {
  ApplicationFailure,
  ParentClosePolicy,
  condition,
  allHandlersFinished,
  defineQuery,
  defineSignal,
  defineUpdate,
  getExternalWorkflowHandle,
  isCancellation,
  log,
  makeContinueAsNewFunc,
  patched,
  proxyActivities,
  setHandler,
  setWorkflowOptions,
  startChild,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { SA } from '../temporal/search-attribute-keys';
import { checkServerId, serverTaskQueue } from '../temporal/task-queues';
import { JobFailure, innermostMessage } from '../activities/failures';
import type { BackupVmInput, BackupVmResult } from './backup-vm';
import type { RestoreVmInput, RestoreVmResult } from './restore-vm';
import { protectionStatus, type StatusLevel } from '../protection/status';
import type { AlertActivities } from '../activities/server/alerts';

export type JobKind = 'backup' | 'check' | 'restore';

export interface JobRequest {
  kind: JobKind;
  /** Who asked: 'schedule', 'cli', a test name: shown in refusals and the record. */
  by: string;
  /** Names the request: the same request delivered again gets the job it started, not a refusal. */
  requestId?: string;
  /** For kind 'restore' (original place): what to restore. */
  restore?: RestoreVmInput;
  /** The server whose chain holds the point to restore (default the owner). */
  server?: string;
  /** Tests shorten a backup's timeouts. */
  timing?: BackupVmInput['timing'];
  /**
   * When it was asked for (the client's clock; a scheduled run's time): names the job. Taken from
   * the request, which the history holds, not from the workflow clock (see begin()).
   */
  requestedAt?: string;
}

export interface JobInfo {
  workflowId: string;
  /** The request that started it. */
  requestId?: string;
  kind: JobKind;
  by: string;
  server: string;
  startedAt: string;
}

export interface JobOutcome extends JobInfo {
  outcome: 'completed' | 'failed' | 'cancelled' | 'skipped';
  endedAt: string;
  pointId?: string;
  error?: string;
  /** A completed job's warning (retention not applied after the commit). */
  warning?: string;
}

/** A chain of recovery points of the data source on one server. */
export interface Chain {
  server: string;
  since: string;
  /** When the data source moved away; the chain stays restorable until its retention lets it go. */
  until?: string;
}

export interface ProtectionState {
  dataSource: string;
  vm: string;
  vmId: string;
  /** The owner: the server whose queue runs the jobs and whose repository keeps the chain. */
  server: string;
  /** The backup input every job starts from (VM id, replica role, offline policy). */
  backup: BackupVmInput;
  chains: Chain[];
  running?: JobInfo;
  /** The last jobs, newest last (at most RECENT). */
  recent: JobOutcome[];
  skippedRuns: number;
  /** Continue as new past this many events (default HISTORY_LIMIT; tests and replay recordings shorten it). */
  historyLimit?: number;
  /** The newest good recovery point, kept however many jobs came after it (protection/status.ts). */
  lastGood?: { pointId: string; at: string };
  /** The host the last completed backup found the VM on: the next backup probes it first. */
  lastHost?: string;
  /** Recovery point objective: older than this is WARNING, twice this CRITICAL (default 24 h). */
  rpoMs?: number;
  /** The protection group it belongs to, if any (workflows/protection-group.ts). */
  group?: string;
  /** The status last alerted on, and how many alerts were sent (their ids' sequence). */
  alerted?: { level: StatusLevel; at: string; sequence: number };
}

const RECENT = 20;
/** Each job costs ~10 events here; continue as new well before Temporal's warnings. */
const HISTORY_LIMIT = 2000;

export const protectionStateQuery = defineQuery<ProtectionState>('state');
export const startJobUpdate = defineUpdate<JobInfo, [JobRequest]>('startJob');
export const moveToUpdate = defineUpdate<ProtectionState, [{ to: string; by: string }]>('moveTo');
export const unprotectUpdate = defineUpdate<void, [{ by: string }]>('unprotect');
/** What setPolicy changes: what is given, the rest stays. */
export interface ProtectionPolicyChange {
  rpoMs?: number;
  allowOffline?: boolean;
  offlineMethod?: 'save' | 'pause';
  by: string;
}
export const setProtectionPolicyUpdate = defineUpdate<ProtectionState, [ProtectionPolicyChange]>('setPolicy');
export const scheduledRunSignal = defineSignal<[{ at: string }]>('scheduledRun');

export function protectionWorkflowId(dataSource: string): string {
  return `protection/${dataSource}`;
}

export async function protection(initial: ProtectionState): Promise<void> {
  const state: ProtectionState = initial;
  let moving = false;
  let ending = false;
  let jobsEnded = 0;
  let alerting = false;
  let policyChanges = 0;

  setHandler(protectionStateQuery, () => state);
  setHandler(startJobUpdate, (req) => begin(req), { validator: (req) => refuseIfBusy(req) });
  setHandler(scheduledRunSignal, ({ at }) => {
    if (state.running || moving || ending) {
      state.skippedRuns++;
      remember({ workflowId: `scheduled/${state.dataSource}/${at}`, kind: 'backup', by: 'schedule', server: state.server, startedAt: at }, 'skipped', undefined,
        state.running ? `${state.running.workflowId} was running` : 'protection changing');
      return;
    }
    const at2 = new Date().toISOString();
    void begin({ kind: 'backup', by: 'schedule', requestedAt: at }).catch((err) => {
      log.warn('scheduled backup did not start', { error: (err as Error).message });
      remember({ workflowId: `scheduled/${state.dataSource}/${at2}`, kind: 'backup', by: 'schedule', server: state.server, startedAt: at2 }, 'failed', undefined, innermostMessage(err));
    });
  });
  setHandler(
    moveToUpdate,
    ({ to, by }) => {
      const now = new Date().toISOString();
      const open = state.chains.find((c) => c.server === state.server && !c.until);
      if (open) open.until = now;
      state.chains.push({ server: to, since: now });
      log.info('protection moved', { from: state.server, to, by });
      state.server = to;
      moving = true;
      return state;
    },
    {
      validator: ({ to }) => {
        checkServerId(to);
        if (to === state.server) throw new Error(`${state.dataSource} is already protected by ${to}`);
        refuseIfBusy();
      },
    },
  );
  setHandler(
    setProtectionPolicyUpdate,
    ({ rpoMs, allowOffline, offlineMethod, by }) => {
      if (rpoMs !== undefined) state.rpoMs = rpoMs;
      const policy = { ...state.backup.policy };
      if (allowOffline !== undefined) policy.allowOffline = allowOffline;
      if (offlineMethod !== undefined) policy.offlineMethod = offlineMethod;
      state.backup = { ...state.backup, policy };
      policyChanges++;
      log.info('protection policy changed', { rpoMs: state.rpoMs, allowOffline: policy.allowOffline, offlineMethod: policy.offlineMethod, by });
      return state;
    },
    {
      validator: ({ rpoMs, offlineMethod }) => {
        if (ending) throw ApplicationFailure.nonRetryable(`${state.dataSource} is being unprotected`, JobFailure.ProtectionChanging);
        if (rpoMs !== undefined && !(Number.isFinite(rpoMs) && rpoMs >= 1000)) throw ApplicationFailure.nonRetryable(`an RPO of ${rpoMs} ms: give at least a second`, 'InvalidInput');
        if (offlineMethod !== undefined && offlineMethod !== 'save' && offlineMethod !== 'pause') throw ApplicationFailure.nonRetryable(`offline method ${String(offlineMethod)}: save or pause`, 'InvalidInput');
      },
    },
  );
  setHandler(
    unprotectUpdate,
    (_req) => {
      ending = true;
    },
    { validator: (_req) => refuseIfBusy() },
  );
  showOwner();
  if (patched('protection-status-alerts')) void watchStatus();

  await condition(() => moving || ending || (!state.running && historyTooLong(state.historyLimit ?? HISTORY_LIMIT)));
  await condition(() => allHandlersFinished() && !state.running && !alerting);
  if (ending) return;
  // A move continues on the new owner's queue; otherwise the same queue, a fresh history.
  await makeContinueAsNewFunc<typeof protection>({ taskQueue: serverTaskQueue(state.server) })(state);

  // ---- the steps ------------------------------------------------------------------------------

  function refuseIfBusy(req?: JobRequest): void {
    if (ending) throw ApplicationFailure.nonRetryable(`${state.dataSource} is being unprotected`, JobFailure.ProtectionChanging);
    if (moving) throw ApplicationFailure.nonRetryable(`${state.dataSource} is moving to ${state.server}; ask again in a moment`, JobFailure.ProtectionChanging);
    const r = state.running;
    if (r && !(req?.requestId && r.requestId === req.requestId)) {
      throw ApplicationFailure.nonRetryable(
        `${describeKind(r.kind)} of ${state.dataSource} is running on ${r.server} (${r.workflowId}, started by ${r.by} at ${r.startedAt}): ` +
          `one backup, check or original-place restore at a time${req ? `, so this ${describeKind(req.kind).replace(/^an? /, '')} was not started` : ''}; ` +
          'watch it or cancel it in the Web UI, or wait for it with `hvprotect status`',
        JobFailure.JobAlreadyRunning,
        r,
      );
    }
    if (req?.kind === 'restore' && req.restore?.target.kind !== 'original') {
      throw ApplicationFailure.nonRetryable('only original-place restores go through the protection; others run on their own', 'InvalidInput');
    }
  }

  async function begin(req: JobRequest): Promise<JobInfo> {
    // No second check here: the SDK runs a handler's first synchronous part right after its
    // validator, so the next request's validator sees `running`; and on replay, where no validator
    // runs, a check could meet the events in another order than the first run did.
    // The job's id names its time. From the workflow clock it was not replay-safe: the chaos run
    // (bench/chaos) had a protection whose first execution saw the clock of the previous task in
    // a signal's task and named its child by it, while replay gave the signal's own task time:
    // non-determinism, the protection stuck. The request's time is in the history: it cannot differ.
    const asked = patched('job-id-from-request-time') ? req.requestedAt : undefined;
    const at = asked && !Number.isNaN(Date.parse(asked)) ? new Date(asked).toISOString() : new Date().toISOString();
    const server = req.server ?? state.server;
    const job: JobInfo = { workflowId: `${req.kind}/${state.dataSource}/${at}`, kind: req.kind, by: req.by, requestId: req.requestId, server, startedAt: at };
    state.running = job;
    const options = {
      workflowId: job.workflowId,
      taskQueue: serverTaskQueue(server),
      // Cancelling the protection cancels its job, whose finally releases the checkpoint.
      parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
      staticSummary: `${describeKind(req.kind)} of ${state.vm} on ${server} (by ${req.by})`,
      typedSearchAttributes: [
        { key: SA.dataSource, value: state.dataSource },
        { key: SA.vm, value: state.vm },
        { key: SA.server, value: server },
      ],
    };
    try {
      const child =
        req.kind === 'restore'
          ? await startChild<(i: RestoreVmInput) => Promise<RestoreVmResult>>('restoreVm', { ...options, args: [{ ...req.restore!, dataSource: state.dataSource }] })
          : await startChild<(i: BackupVmInput) => Promise<BackupVmResult>>('backupVm', {
              ...options,
              args: [{ ...state.backup, dataSource: state.dataSource, kind: req.kind === 'check' ? 'consistency-check' : 'auto', timing: req.timing ?? state.backup.timing, ...(state.lastHost ? { lastHost: state.lastHost } : {}) }],
            });
      child.result().then(
        (r) => {
          const backup = r as Partial<BackupVmResult>;
          if (job.kind !== 'restore' && backup.host) state.lastHost = backup.host;
          remember(job, 'completed', r.pointId, undefined, backup.retentionWarning);
        },
        (err) => remember(job, isCancellation(err) ? 'cancelled' : 'failed', undefined, innermostMessage(err)),
      );
    } catch (err) {
      state.running = undefined;
      throw err;
    }
    return job;
  }

  function remember(job: JobInfo, outcome: JobOutcome['outcome'], pointId?: string, error?: string, warning?: string): void {
    if (state.running?.workflowId === job.workflowId) state.running = undefined;
    if (outcome === 'completed' && pointId && job.kind !== 'restore') state.lastGood = { pointId, at: new Date().toISOString() };
    jobsEnded++;
    state.recent.push({ ...job, outcome, endedAt: new Date().toISOString(), pointId, error, ...(warning ? { warning } : {}) });
    if (state.recent.length > RECENT) state.recent.splice(0, state.recent.length - RECENT);
  }

  /**
   * Alerts once per change of status (OK, WARNING, CRITICAL; protection/status.ts): after every
   * job, and by a timer at the moment the last good point passes the RPO or twice it.
   */
  async function watchStatus(): Promise<void> {
    const alerts = proxyActivities<AlertActivities>({
      startToCloseTimeout: '1 minute',
      // A receiver that is down gets the alert when it is back (within a day), in order.
      scheduleToCloseTimeout: '24 hours',
      retry: { initialInterval: '10 seconds', backoffCoefficient: 2, maximumInterval: '10 minutes' },
    });
    while (!moving && !ending) {
      const now = new Date();
      const status = protectionStatus(state, now);
      const previous = state.alerted?.level ?? 'OK';
      if (status.level !== previous) {
        const sequence = (state.alerted?.sequence ?? 0) + 1;
        alerting = true;
        try {
          await alerts.protectionAlert({ id: `${state.dataSource}/${sequence}`, dataSource: state.dataSource, vm: state.vm, server: state.server, from: previous, to: status.level, status, at: now.toISOString() });
        } catch (err) {
          log.warn('protection alert not delivered', { error: innermostMessage(err) });
        } finally {
          alerting = false;
        }
        state.alerted = { level: status.level, at: now.toISOString(), sequence };
      }
      const seen = jobsEnded;
      const seenPolicy = policyChanges;
      const wait = status.worsensAt ? Math.max(1000, Date.parse(status.worsensAt) - Date.now() + 1000) : undefined;
      // A new RPO is judged at once (no timer set by the old one is waited out).
      await condition(() => jobsEnded !== seen || policyChanges !== seenPolicy || moving || ending, wait as number);
    }
  }

  function showOwner(): void {
    upsertMemo({ dataSource: state.dataSource, vm: state.vm, vmId: state.vmId, server: state.server, ...(state.group ? { group: state.group } : {}) });
    upsertSearchAttributes([
      { key: SA.dataSource, value: state.dataSource },
      { key: SA.vm, value: state.vm },
      { key: SA.server, value: state.server },
    ]);
  }
}

// Long-lived: they move to the server's current build at their next task (temporal/versioning.ts);
// their jobs (backupVm, restoreVm) stay pinned to the build that started them.
setWorkflowOptions({ versioningBehavior: 'AUTO_UPGRADE' }, protection);

/** Started by the Schedule `protect/<ds>`: asks the protection for a backup and ends. */
export async function scheduledBackup(input: { dataSource: string }): Promise<void> {
  await getExternalWorkflowHandle(protectionWorkflowId(input.dataSource)).signal(scheduledRunSignal, { at: workflowInfo().startTime.toISOString() });
}

// A schedule's run started while the server drains waits, then signals whatever build is current.
setWorkflowOptions({ versioningBehavior: 'AUTO_UPGRADE' }, scheduledBackup);

function historyTooLong(limit: number): boolean {
  const info = workflowInfo();
  return info.continueAsNewSuggested || info.historyLength > limit;
}

function describeKind(kind: JobKind): string {
  return kind === 'check' ? 'a consistency check' : kind === 'restore' ? 'a restore' : 'a backup';
}

