// Keeps ProtectionMetrics.protectionStates current: every `intervalMs` the server lists the
// protections it owns and asks each for its state (the query answers from the workflow's own
// record; the list only says which exist). Status and gauges are computed from those states.
import type { Client } from '@temporalio/client';
import type { Logger } from '../log/logger';
import type { ProtectionMetrics } from './metrics';
import { ownedDataSources, ownedProtectionState } from '../client/protection';
import { within } from '../temporal/within';
import { startPeriodic } from '../workers/periodic';

export function startProtectionStates(o: { client: Client; serverId: string; metrics: ProtectionMetrics; logger: Logger; intervalMs?: number }): { refresh(): Promise<void>; stop(): void } {
  const refresh = async () => {
    const listed = await ownedDataSources(o.client, o.serverId);
    // A few at a time: hundreds of protections must not open hundreds of queries at once.
    for (let i = 0; i < listed.length; i += 8) {
      await Promise.all(
        listed.slice(i, i + 8).map(async (ds) => {
          const state = await ownedProtectionState(o.client, o.serverId, ds, 10_000);
          if (state) o.metrics.protectionStates.set(state.dataSource, { state, answeredAt: Date.now() });
        }),
      );
    }
    // Gone from the list: unprotected or moved. Listed but not answering (a drained server, a
    // stuck workflow): kept as last seen, and hvprotect_protection_state_age_seconds grows.
    const names = new Set(listed);
    for (const ds of [...o.metrics.protectionStates.keys()]) if (!names.has(ds)) o.metrics.protectionStates.delete(ds);
  };
  // Bounded, so one query or listing that never answers cannot stop the gauges for good.
  const loop = startPeriodic({ run: () => within(refresh(), 60_000), intervalMs: o.intervalMs ?? 30_000, logger: o.logger, failure: 'protection states not refreshed' });
  return {
    refresh: async () => {
      await loop.idle();
      await refresh();
    },
    stop: loop.stop,
  };
}

