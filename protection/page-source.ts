// What the protection page shows (storage-api/routes/protection-page.ts), read by the protection
// server: the protections it owns from their own state (status, last point, job), their schedules
// (next run, paused), and its repository (shadow storage, points).
import type { Client } from '@temporalio/client';
import type { Repository } from '../repository';
import type { PagePoint, PageSource, PageVm } from '../storage-api/routes/protection-page';
import type { ProtectionState } from '../workflows/protection';
import { ownedDataSources, ownedProtectionState } from '../client/protection';
import { protectionStatus } from './status';

export function protectionPageSource(o: { client: Client; repository: Repository; serverId: string; webUi?: string }): PageSource {
  const link = (workflowId: string) =>
    o.webUi ? `${o.webUi.replace(/\/+$/, '')}/namespaces/${encodeURIComponent(o.client.options.namespace)}/workflows/${encodeURIComponent(workflowId)}` : undefined;

  async function vmOf(state: ProtectionState): Promise<PageVm> {
    const st = protectionStatus(state, new Date());
    const schedule = await o.client.schedule.getHandle(`protect/${state.dataSource}`).describe().catch(() => undefined);
    const usage = await o.repository.usage(state.dataSource).catch(() => undefined);
    const job = state.running ?? [...state.recent].reverse().find((r) => r.outcome !== 'skipped');
    return {
      dataSource: state.dataSource,
      vm: state.vm,
      group: state.group,
      level: st.level,
      reason: st.reason,
      lastPointAt: st.lastGood?.at,
      nextRun: schedule?.info.nextActionTimes[0]?.toISOString(),
      paused: schedule?.state.paused ?? false,
      shadowStorage: { usedBytes: usage?.usedBytes ?? 0, maximumBytes: usage?.maximumBytes ?? null, points: usage?.points ?? 0 },
      job: job && { workflowId: job.workflowId, running: job === state.running, link: link(job.workflowId) },
    };
  }

  const stateOf = (dataSource: string) => ownedProtectionState(o.client, o.serverId, dataSource);

  return {
    serverId: o.serverId,
    async vms() {
      const out: PageVm[] = [];
      for (const ds of await ownedDataSources(o.client, o.serverId)) {
        const state = await stateOf(ds);
        if (state) out.push(await vmOf(state));
      }
      const order = { CRITICAL: 0, WARNING: 1, OK: 2 };
      return out.sort((a, b) => order[a.level] - order[b.level] || a.vm.localeCompare(b.vm));
    },
    async points(dataSource) {
      const state = await stateOf(dataSource);
      if (!state) return undefined;
      const points: PagePoint[] = (await o.repository.listPoints(dataSource)).map((p) => ({
        pointId: p.pointId,
        createdAt: p.createdAt,
        kind: p.kind,
        mode: p.mode,
        storedBytes: p.ownedBytes,
        downtimeMs: p.backup.downtimeMs,
      }));
      return { vm: await vmOf(state), points };
    },
  };
}
