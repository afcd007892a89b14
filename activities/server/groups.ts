// The reconcile step of a protection group (workflows/protection-group.ts), on the server that
// owns its data sources: find the VMs its members cover, protect the new ones with the group's
// policy, report the ones no host sees any more, refuse the ones another group (or a protection
// of their own) has.
import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import type { Repository } from '../../repository';
import type { VmSummary } from '../../hypervisor/types';
import type { GroupMember, GroupPolicy, GroupState, GroupVm } from '../../workflows/protection-group';
import { protectionWorkflowId } from '../../workflows/protection';
import { dataSourceIdFor, defaultRpoMs, findAllVms, protectVm, retimeProtection, setProtectionPolicy } from '../../client/protection';
import { parseShadowStorageSize } from '../../repository/shadow-storage';

export interface ReconcileInput {
  name: string;
  policy: GroupPolicy;
  members: GroupMember[];
  protected: GroupVm[];
  missing: GroupState['missing'];
  /** The policy changed: give the group's VMs its schedule and storage settings again. */
  reapply?: boolean;
}

export type ReconcileResult = Pick<GroupState, 'protected' | 'missing' | 'refused' | 'silentHosts'>;

export interface GroupActivities {
  reconcileGroup(input: ReconcileInput): Promise<ReconcileResult>;
}

export function covers(member: GroupMember, vm: VmSummary): boolean {
  const n = member.name.toLowerCase();
  if (member.kind === 'vm') return vm.name.toLowerCase() === n || vm.vmId.toLowerCase() === n;
  if (member.kind === 'host') return vm.host.toLowerCase() === n;
  return vm.cluster?.toLowerCase() === n;
}

export function createGroupActivities(deps: { client: Client; repository: Repository; taskQueue: string }): GroupActivities {
  return {
    async reconcileGroup(input) {
      const ctx = Context.current();
      const found = await findAllVms(deps.client, deps.taskQueue, `group-${input.name}-`);
      ctx.heartbeat();
      const now = new Date().toISOString();
      const byId = new Map<string, VmSummary>();
      for (const v of found.vms) if (!byId.has(v.vmId)) byId.set(v.vmId, v);
      const protectedVms: GroupVm[] = [];
      const missing: GroupState['missing'] = [];
      const refused: GroupState['refused'] = [];
      // The group's VMs: still there (with where they are now), or missing unless their host is silent.
      for (const g of [...input.protected, ...input.missing]) {
        // Unprotected meanwhile (`protect remove`, `group remove --unprotect`): no longer the group's.
        const p = await deps.client.workflow.getHandle(protectionWorkflowId(g.dataSource)).describe().catch(() => undefined);
        if (p && p.status.name !== 'RUNNING') continue;
        if (input.reapply && p) {
          await retimeProtection(deps.client, g.dataSource, { at: input.policy.at, everyHours: input.policy.everyHours, timezone: input.policy.timezone }, input.policy.server);
          // The RPO (the group's, else the new schedule's longest gap plus an hour, as for a new
          // protection) and the offline policy reach the VMs the group protects already.
          await setProtectionPolicy(deps.client, g.dataSource, { rpoMs: groupRpoMs(input.policy), allowOffline: input.policy.allowOffline, offlineMethod: input.policy.offlineMethod }, `group ${input.name}`);
          await applyStorageSettings(deps.repository, g.dataSource, input.policy);
        }
        const here = byId.get(g.vmId);
        if (here) protectedVms.push({ ...g, vm: here.name, host: here.host });
        else if (found.silentHosts.includes(g.host)) protectedVms.push(g);
        else missing.push({ ...g, missingSince: (g as { missingSince?: string }).missingSince ?? now });
      }
      const ours = new Set([...protectedVms, ...missing].map((g) => g.vmId));
      for (const vm of byId.values()) {
        if (ours.has(vm.vmId) || !input.members.some((m) => covers(m, vm))) continue;
        const dataSource = dataSourceIdFor(vm.name);
        const existing = await deps.client.workflow.getHandle(protectionWorkflowId(dataSource)).describe().catch(() => undefined);
        if (existing?.status.name === 'RUNNING') {
          const group = (((await existing.memo) ?? {}) as { group?: string }).group;
          if (group === input.name) protectedVms.push({ vmId: vm.vmId, vm: vm.name, host: vm.host, dataSource, since: now });
          else refused.push({ vm: vm.name, reason: group ? `in group ${group}` : 'protected on its own (`hvprotect protect remove` it to let the group take it)' });
          continue;
        }
        try {
          await protectVm(deps.client, {
            vm,
            server: input.policy.server,
            dataSource,
            group: input.name,
            schedule: { at: input.policy.at, everyHours: input.policy.everyHours, timezone: input.policy.timezone, rpoMs: groupRpoMs(input.policy) },
            allowOffline: input.policy.allowOffline,
            offlineMethod: input.policy.offlineMethod,
          });
          await applyStorageSettings(deps.repository, dataSource, input.policy);
          protectedVms.push({ vmId: vm.vmId, vm: vm.name, host: vm.host, dataSource, since: now });
        } catch (err) {
          refused.push({ vm: vm.name, reason: (err as Error).message });
        }
        ctx.heartbeat();
      }
      return { protected: protectedVms, missing, refused, silentHosts: found.silentHosts };
    },
  };
}

/** The group's RPO, else what a protection of its schedule gets by default: the longest gap plus an hour. */
export function groupRpoMs(policy: Pick<GroupPolicy, 'rpoHours' | 'at' | 'everyHours'>): number {
  return policy.rpoHours ? policy.rpoHours * 3_600_000 : defaultRpoMs(policy);
}

async function applyStorageSettings(repository: Repository, dataSource: string, policy: GroupPolicy): Promise<void> {
  if (!policy.retentionDays && !policy.maxPoints && !policy.maxSize) return;
  const maxSize = policy.maxSize ? parseShadowStorageSize(policy.maxSize) : undefined;
  await repository.addShadowStorage(dataSource, maxSize).catch(() => undefined);
  await repository.resizeShadowStorage(dataSource, { maxSize, maxPoints: policy.maxPoints, retentionRangeDays: policy.retentionDays });
}
