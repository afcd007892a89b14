// Keeps ProtectionMetrics.protectionStates current: every `intervalMs` the server lists the
// protections it owns and asks each for its state (the query answers from the workflow's own
// record; the list only says which exist). Status and gauges are computed from those states.
import type { Client } from '@temporalio/client';
import type { Logger } from '../log/logger';
import type { ProtectionMetrics } from './metrics';
import { protectionStateQuery, type ProtectionState } from '../workflows/protection';
import { within } from '../temporal/within';

export function startProtectionStates(o: { client: Client; serverId: string; metrics: ProtectionMetrics; logger: Logger; intervalMs?: number }): { refresh(): Promise<void>; stop(): void } {
  let stopped = false;
  let running: Promise<void> | undefined;
  const refresh = async () => {
    const ids: string[] = [];
    for await (const wf of o.client.workflow.list({ query: `WorkflowType = 'protection' AND ExecutionStatus = 'Running' AND BackupServer = '${o.serverId}'` })) ids.push(wf.workflowId);
    // A few at a time: hundreds of protections must not open hundreds of queries at once.
    for (let i = 0; i < ids.length; i += 8) {
      await Promise.all(
        ids.slice(i, i + 8).map(async (id) => {
          const state = (await within(o.client.workflow.getHandle(id).query(protectionStateQuery), 10_000).catch(() => undefined)) as ProtectionState | undefined;
          if (state && state.server === o.serverId) {
            o.metrics.protectionStates.set(state.dataSource, state);
          }
        }),
      );
    }
    // Gone from the list: unprotected or moved. Listed but not answering (a drained server): kept as last seen.
    const listed = new Set(ids.map((id) => id.slice('protection/'.length)));
    for (const ds of [...o.metrics.protectionStates.keys()]) if (!listed.has(ds)) o.metrics.protectionStates.delete(ds);
  };
  const tick = async () => {
    if (stopped) return;
    // Bounded, so one query or listing that never answers cannot stop the gauges for good.
    running = within(refresh(), 60_000).catch((err) => o.logger.warn({ err: (err as Error).message }, 'protection states not refreshed'));
    await running;
    if (!stopped) timer = setTimeout(tick, o.intervalMs ?? 30_000);
  };
  let timer: NodeJS.Timeout = setTimeout(tick, 0);
  return {
    refresh: async () => {
      await running;
      await refresh();
    },
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

