// The protection server's session keeper: a backup session lives exactly as long as the workflow
// run that opened it. Every few minutes each session with an owner is checked against Temporal:
// its run still open → another TTL (a backup may spend hours on a disk queued behind others, or
// on a consistency check that finds nothing to send); its run closed (completed, failed,
// terminated, …) → aborted, so no orphan holds back GC or counts as shadow storage. When Temporal
// cannot be asked, nothing changes and the TTL stays the backstop.
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { Logger } from '../log/logger';
import type { Repository } from '../repository';

/** How often sessions are checked (well inside the 6 h TTL). */
export const SESSION_KEEP_INTERVAL_MS = 5 * 60 * 1000;
/** The first sweep after start. */
const FIRST_SWEEP_MS = 30 * 1000;

export interface SessionSweep {
  kept: string[];
  aborted: string[];
}

export interface SessionKeeper {
  sweep(): Promise<SessionSweep>;
  stop(): Promise<void>;
}

export function startSessionKeeper(o: { repository: Repository; client: Client; logger: Logger; intervalMs?: number }): SessionKeeper {
  let running: Promise<unknown> = Promise.resolve();
  async function sweep(): Promise<SessionSweep> {
    const out: SessionSweep = { kept: [], aborted: [] };
    for (const s of await o.repository.listSessions()) {
      if (!s.owner) continue;
      let open: boolean;
      try {
        const d = await o.client.workflow.getHandle(s.owner.workflowId, s.owner.runId).describe();
        open = d.status.name === 'RUNNING';
      } catch (err) {
        if (!(err instanceof WorkflowNotFoundError)) continue; // Temporal not answering: decide next time
        open = false;
      }
      if (open) {
        await o.repository.keepSessionAlive(s.sessionId).then(() => out.kept.push(s.sessionId), () => undefined);
      } else {
        await o.repository.abortSession(s.sessionId);
        out.aborted.push(s.sessionId);
        o.logger.warn({ sessionId: s.sessionId, dataSource: s.dataSource, workflowId: s.owner.workflowId, runId: s.owner.runId }, 'backup session aborted: its workflow run has ended');
      }
    }
    return out;
  }
  const tick = () => {
    running = running.then(sweep).catch((err) => o.logger.warn({ err }, 'session keeper sweep failed'));
  };
  const interval = o.intervalMs ?? SESSION_KEEP_INTERVAL_MS;
  const timer = setInterval(tick, interval);
  timer.unref();
  // Also soon after start: a server restarted more often than the interval (a crash loop; the chaos
  // run's kill -9 every few minutes) would otherwise never sweep, and orphans would wait for the TTL.
  const first = setTimeout(tick, Math.min(interval, FIRST_SWEEP_MS));
  first.unref();
  return {
    sweep: () => (running = running.then(sweep)) as Promise<SessionSweep>,
    stop: async () => {
      clearInterval(timer);
      clearTimeout(first);
      await running;
    },
  };
}
