// What backup workflows did and when, read back from their Temporal histories: the load test and
// the benchmarks (bench/load.ts, bench/backup-e2e.ts) check concurrency limits and measure
// orchestration overhead with these. Times are the server's event times (ms since epoch).
//
// A transfer's [started, closed] interval from the history lies inside the worker slot it held:
// the slot is taken before the poll that receives the task and given back after the completion
// call returns. So the history can never show more transfers at once on a host than the agent
// ran, and "at most N overlapping history intervals" is a sound check of a limit of N.
import type { Client } from '@temporalio/client';

export interface ActivityRun {
  activityType: string;
  taskQueue: string;
  scheduledAt: number;
  /** History order (event ids) of its scheduling and its end: exact where times tie at 1 ms. */
  scheduledEventId: number;
  closedEventId?: number;
  startedAt?: number;
  closedAt?: number;
  /** Attempt of the run the history shows (the last one). */
  attempt?: number;
  outcome: 'completed' | 'failed' | 'timed-out' | 'cancelled' | 'open';
  failure?: string;
}

export interface WorkflowRun {
  workflowId: string;
  runId?: string;
  startedAt: number;
  closedAt?: number;
  outcome: 'completed' | 'failed' | 'cancelled' | 'terminated' | 'timed-out' | 'continued' | 'open';
  failure?: string;
  activities: ActivityRun[];
  /** Its workflow tasks: scheduled → started (waiting for a worker's poll) → completed (the worker's work). */
  workflowTasks: Array<{ scheduledAt: number; startedAt?: number; completedAt?: number }>;
  /** The workflow's first argument and its result when it completed (JSON payloads only). */
  input?: unknown;
  result?: unknown;
}

type Ts = { seconds?: { toString(): string } | number | null; nanos?: number | null } | null | undefined;

export function tsMs(ts: Ts): number {
  if (!ts) return NaN;
  const s = typeof ts.seconds === 'number' ? ts.seconds : Number(ts.seconds?.toString() ?? 0);
  return s * 1000 + Math.floor((ts.nanos ?? 0) / 1e6);
}

function decodePayload(p: { data?: Uint8Array | null; metadata?: Record<string, Uint8Array> | null } | undefined): unknown {
  if (!p?.data) return undefined;
  const enc = p.metadata?.encoding ? Buffer.from(p.metadata.encoding).toString() : '';
  if (enc !== 'json/plain') return undefined;
  return JSON.parse(Buffer.from(p.data).toString('utf8'));
}

/** Reads one workflow's history into its activity runs. */
export async function readWorkflowRun(client: Client, workflowId: string, runId?: string): Promise<WorkflowRun> {
  const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
  const byScheduled = new Map<string, ActivityRun>();
  const wfts = new Map<string, WorkflowRun['workflowTasks'][number]>();
  const run: WorkflowRun = { workflowId, runId, startedAt: NaN, outcome: 'open', activities: [], workflowTasks: [] };
  for (const e of history.events ?? []) {
    const t = tsMs(e.eventTime as Ts);
    const id = String(e.eventId);
    if (e.workflowExecutionStartedEventAttributes) {
      run.startedAt = t;
      run.runId ??= e.workflowExecutionStartedEventAttributes.originalExecutionRunId ?? undefined;
      run.input = decodePayload(e.workflowExecutionStartedEventAttributes.input?.payloads?.[0] as never);
    } else if (e.workflowExecutionCompletedEventAttributes) {
      run.closedAt = t;
      run.outcome = 'completed';
      run.result = decodePayload(e.workflowExecutionCompletedEventAttributes.result?.payloads?.[0] as never);
    } else if (e.workflowExecutionFailedEventAttributes) {
      run.closedAt = t;
      run.outcome = 'failed';
      run.failure = e.workflowExecutionFailedEventAttributes.failure?.message ?? undefined;
    } else if (e.workflowExecutionCanceledEventAttributes) {
      run.closedAt = t;
      run.outcome = 'cancelled';
    } else if (e.workflowExecutionTerminatedEventAttributes) {
      run.closedAt = t;
      run.outcome = 'terminated';
    } else if (e.workflowExecutionTimedOutEventAttributes) {
      run.closedAt = t;
      run.outcome = 'timed-out';
    } else if (e.workflowExecutionContinuedAsNewEventAttributes) {
      run.closedAt = t;
      run.outcome = 'continued';
    } else if (e.workflowTaskScheduledEventAttributes) {
      wfts.set(id, { scheduledAt: t });
      run.workflowTasks.push(wfts.get(id)!);
    } else if (e.workflowTaskStartedEventAttributes) {
      const w = wfts.get(String(e.workflowTaskStartedEventAttributes.scheduledEventId));
      if (w) w.startedAt = t;
    } else if (e.workflowTaskCompletedEventAttributes) {
      const w = wfts.get(String(e.workflowTaskCompletedEventAttributes.scheduledEventId));
      if (w) w.completedAt = t;
    } else if (e.activityTaskScheduledEventAttributes) {
      const a = e.activityTaskScheduledEventAttributes;
      const act: ActivityRun = { activityType: a.activityType?.name ?? '?', taskQueue: a.taskQueue?.name ?? '?', scheduledAt: t, scheduledEventId: Number(e.eventId), outcome: 'open' };
      byScheduled.set(id, act);
      run.activities.push(act);
    } else if (e.activityTaskStartedEventAttributes) {
      const a = e.activityTaskStartedEventAttributes;
      const act = byScheduled.get(String(a.scheduledEventId));
      if (act) {
        act.startedAt = t;
        act.attempt = a.attempt ?? undefined;
      }
    } else {
      const closed =
        (e.activityTaskCompletedEventAttributes && (['completed', e.activityTaskCompletedEventAttributes] as const)) ||
        (e.activityTaskFailedEventAttributes && (['failed', e.activityTaskFailedEventAttributes] as const)) ||
        (e.activityTaskTimedOutEventAttributes && (['timed-out', e.activityTaskTimedOutEventAttributes] as const)) ||
        (e.activityTaskCanceledEventAttributes && (['cancelled', e.activityTaskCanceledEventAttributes] as const));
      if (closed) {
        const [outcome, attrs] = closed;
        const act = byScheduled.get(String(attrs.scheduledEventId));
        if (act) {
          act.closedAt = t;
          act.closedEventId = Number(e.eventId);
          act.outcome = outcome;
          const f = (attrs as { failure?: { message?: string | null; cause?: { message?: string | null } | null } | null }).failure;
          if (f) act.failure = [f.message, f.cause?.message].filter(Boolean).join(': ');
        }
      }
    }
  }
  return run;
}

/** Reads many histories, a few at a time (the dev server is on the same 2 cores). */
export async function readWorkflowRuns(client: Client, ids: Array<{ workflowId: string; runId?: string }>, concurrency = 8): Promise<WorkflowRun[]> {
  const out = new Array<WorkflowRun>(ids.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, ids.length) }, async () => {
      while (next < ids.length) {
        const i = next++;
        out[i] = await readWorkflowRun(client, ids[i].workflowId, ids[i].runId);
      }
    }),
  );
  return out;
}

export interface Interval {
  start: number;
  end: number;
  label?: string;
}

/**
 * The largest number of intervals open at one instant. An interval that ends at the same
 * millisecond another starts does not count as overlapping it (event times have 1 ms resolution
 * and a slot is always given back before the next task on it starts).
 */
export function maxOverlap(intervals: Interval[]): { max: number; at?: number; labels: string[] } {
  const points: Array<{ t: number; d: number; label?: string }> = [];
  for (const i of intervals) {
    points.push({ t: i.start, d: 1, label: i.label });
    points.push({ t: i.end, d: -1, label: i.label });
  }
  points.sort((a, b) => a.t - b.t || a.d - b.d); // ends before starts at equal times
  let cur = 0;
  let best = { max: 0, at: undefined as number | undefined, labels: [] as string[] };
  const open = new Set<string>();
  for (const p of points) {
    cur += p.d;
    if (p.label !== undefined) {
      if (p.d > 0) open.add(p.label);
      else open.delete(p.label);
    }
    if (cur > best.max) best = { max: cur, at: p.t, labels: [...open] };
  }
  return best;
}

/** Pairs of intervals that overlap (same rule as maxOverlap), for messages. */
export function overlappingPairs(intervals: Interval[]): Array<[Interval, Interval]> {
  const sorted = [...intervals].sort((a, b) => a.start - b.start);
  const out: Array<[Interval, Interval]> = [];
  for (let i = 0; i < sorted.length; i++) {
    for (let j = i + 1; j < sorted.length && sorted[j].start < sorted[i].end; j++) out.push([sorted[i], sorted[j]]);
  }
  return out;
}

/** Transfer activity intervals per host, from the runs (host = the transfer queue's suffix). */
export function transfersByHost(runs: WorkflowRun[], transferQueuePrefix = 'hvprotect-transfer-'): Map<string, Interval[]> {
  const byHost = new Map<string, Interval[]>();
  for (const r of runs) {
    for (const a of r.activities) {
      if (a.activityType !== 'transferDisk' || a.startedAt === undefined || a.closedAt === undefined) continue;
      const host = a.taskQueue.startsWith(transferQueuePrefix) ? a.taskQueue.slice(transferQueuePrefix.length) : a.taskQueue;
      const list = byHost.get(host) ?? [];
      list.push({ start: a.startedAt, end: a.closedAt, label: r.workflowId });
      byHost.set(host, list);
    }
  }
  return byHost;
}

/**
 * The interval a backup certainly held its data source's lease: from the moment acquiring it
 * reported success (the lease was written before) to the moment releasing it started (it is
 * removed after). Two such intervals of one data source overlapping is a real violation.
 */
/** From a backup's first step to its last: when it held the VM (none when it ran no step). */
export function jobInterval(r: WorkflowRun): Interval | undefined {
  const steps = r.activities.filter((a) => a.scheduledAt !== undefined);
  if (!steps.length) return undefined;
  const start = Math.min(...steps.map((a) => a.scheduledAt!));
  const end = Math.max(...steps.map((a) => a.closedAt ?? r.closedAt ?? Date.now()));
  return { start, end, label: r.workflowId };
}

/** Time inside transfer activities (started → closed, summed over disks). */
export function transferMs(r: WorkflowRun): number {
  return r.activities
    .filter((a) => a.activityType === 'transferDisk' && a.startedAt !== undefined && a.closedAt !== undefined)
    .reduce((s, a) => s + (a.closedAt! - a.startedAt!), 0);
}

export function quantile(xs: number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

/**
 * Retries a Temporal call that may time out while the dev server is saturated (DescribeSchedule
 * is a query to the schedule's own workflow and hits its deadline under load).
 */
export async function withRetry<T>(what: string, fn: () => Promise<T>, attempts = 6): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (err) {
      const text = `${(err as Error).message} ${String((err as { cause?: Error }).cause?.message ?? '')}`;
      if (i >= attempts || !/DEADLINE_EXCEEDED|UNAVAILABLE|deadline|RESOURCE_EXHAUSTED/i.test(text)) throw err;
      await new Promise((r) => setTimeout(r, 500 * i));
    }
  }
}

export interface ListedRun {
  workflowId: string;
  runId: string;
  status: string;
  startTime: Date;
  closeTime?: Date;
}

/**
 * backupVm workflows whose id starts with `idPrefix`, from visibility (may lag a moment);
 * `scheduleId` narrows the query to the runs one schedule started.
 */
export async function listBackups(client: Client, idPrefix: string, scheduleId?: string): Promise<ListedRun[]> {
  const query = `WorkflowType = 'backupVm'${scheduleId ? ` AND TemporalScheduledById = '${scheduleId.replace(/'/g, '')}'` : ''}`;
  return withRetry('list workflows', async () => {
    const out: ListedRun[] = [];
    for await (const w of client.workflow.list({ query })) {
      if (w.workflowId.startsWith(idPrefix)) out.push({ workflowId: w.workflowId, runId: w.runId, status: w.status.name, startTime: w.startTime, closeTime: w.closeTime });
    }
    return out;
  });
}

/** Workflow time (started → closed) during which no activity was scheduled or running: workflow tasks and hand-offs. */
export function outsideActivitiesMs(r: WorkflowRun): number {
  if (r.closedAt === undefined) return NaN;
  const iv = r.activities.filter((a) => a.closedAt !== undefined).map((a) => [a.scheduledAt, a.closedAt!] as const).sort((a, b) => a[0] - b[0]);
  let covered = 0;
  let end = -Infinity;
  for (const [s, e] of iv) {
    if (s > end) {
      covered += e - s;
      end = e;
    } else if (e > end) {
      covered += e - end;
      end = e;
    }
  }
  return r.closedAt - r.startedAt - covered;
}
