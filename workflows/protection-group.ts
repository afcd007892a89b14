// protectionGroup: a named policy applied to members, as DPM's protection groups (`group/<name>`).
//
//   policy   schedule (times and zone, or every N hours), RPO, retention range, maximum points,
//            shadow storage limit, offline policy, and the server that owns its data sources
//   members  VMs by name or id, whole hosts, whole clusters
//   reconcile every few minutes, and at once after a change, the owning server finds the members'
//            VMs (activities/server/groups.ts): a VM not protected yet is protected with the
//            policy (so VMs created later on a member host or cluster are protected by themselves);
//            a VM of the group that no host reports any more is reported missing, never dropped;
//            a VM another group or its own `protect add` already has is refused, naming it
//
// Long-lived (AUTO_UPGRADE, temporal/versioning.ts); continues as new before its history grows.
import {
  allHandlersFinished,
  condition,
  defineQuery,
  defineSignal,
  defineUpdate,
  makeContinueAsNewFunc,
  proxyActivities,
  setHandler,
  setWorkflowOptions,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
  ApplicationFailure,
} from '@temporalio/workflow';
import { SA } from '../temporal/search-attribute-keys';
import { innermostMessage } from '../activities/failures';
import type { GroupActivities } from '../activities/server/groups';

export interface GroupPolicy {
  server: string;
  /** Times of day "HH:MM", or everyHours. */
  at?: string[];
  everyHours?: number;
  timezone?: string;
  rpoHours?: number;
  retentionDays?: number;
  maxPoints?: number;
  /** Shadow storage limit: "20GB", "15%" or "UNBOUNDED". */
  maxSize?: string;
  allowOffline: boolean;
  offlineMethod: 'save' | 'pause';
}

export interface GroupMember {
  kind: 'vm' | 'host' | 'cluster';
  name: string;
}

export interface GroupVm {
  vmId: string;
  vm: string;
  host: string;
  dataSource: string;
  since: string;
}

export interface GroupState {
  name: string;
  policy: GroupPolicy;
  members: GroupMember[];
  protected: GroupVm[];
  /** VMs of the group no host reports any more: still protected, their points kept. */
  missing: Array<GroupVm & { missingSince: string }>;
  /** VMs a member covers that another group or a protection of its own has. */
  refused: Array<{ vm: string; reason: string }>;
  /** Hosts that did not answer the last reconcile: their VMs are neither added nor missing. */
  silentHosts: string[];
  lastReconcile?: { at: string; error?: string };
  /** How often to reconcile without a change (default 5 minutes; tests shorten it). */
  reconcileEveryMs?: number;
}

export const groupStateQuery = defineQuery<GroupState>('state');
export const addMembersUpdate = defineUpdate<GroupState, [GroupMember[]]>('addMembers');
export const removeMembersUpdate = defineUpdate<GroupState, [GroupMember[]]>('removeMembers');
export const setPolicyUpdate = defineUpdate<GroupState, [Partial<Omit<GroupPolicy, 'server'>>]>('setPolicy');
export const deleteGroupUpdate = defineUpdate<void, []>('deleteGroup');
export const reconcileSignal = defineSignal('reconcile');

export function groupWorkflowId(name: string): string {
  return `group/${name}`;
}

export function sameMember(a: GroupMember, b: GroupMember): boolean {
  return a.kind === b.kind && a.name.toLowerCase() === b.name.toLowerCase();
}

const acts = proxyActivities<GroupActivities>({ startToCloseTimeout: '10 minutes', heartbeatTimeout: '2 minutes', retry: { maximumAttempts: 3 } });

export async function protectionGroup(initial: GroupState): Promise<void> {
  const state = initial;
  let dirty = true;
  let policyChanged = false;
  let ending = false;
  let reconciling = false;

  setHandler(groupStateQuery, () => state);
  setHandler(reconcileSignal, () => {
    dirty = true;
  });
  setHandler(
    addMembersUpdate,
    (members) => {
      for (const m of members) if (!state.members.some((x) => sameMember(x, m))) state.members.push(m);
      dirty = true;
      return state;
    },
    { validator: (members) => validMembers(members) },
  );
  setHandler(
    removeMembersUpdate,
    async (members) => {
      state.members = state.members.filter((x) => !members.some((m) => sameMember(x, m)));
      dirty = true;
      // A reconcile in flight still works with the old members and could protect a VM of a removed
      // member again: answer once it is over, so what the caller does next (unprotect) sticks.
      await condition(() => !reconciling);
      return state;
    },
    {
      validator: (members: GroupMember[]) => {
        validMembers(members);
        const unknown = members.filter((m: GroupMember) => !state.members.some((x) => sameMember(x, m)));
        if (unknown.length) throw ApplicationFailure.nonRetryable(`not members of ${state.name}: ${unknown.map((m: GroupMember) => `${m.kind} ${m.name}`).join(', ')}`, 'InvalidInput');
      },
    },
  );
  setHandler(setPolicyUpdate, (change) => {
    state.policy = { ...state.policy, ...change };
    dirty = true;
    policyChanged = true;
    return state;
  });
  setHandler(deleteGroupUpdate, () => {
    ending = true;
  }, {
    validator: () => {
      if (state.protected.length || state.missing.length) {
        throw ApplicationFailure.nonRetryable(`${state.name} still protects ${state.protected.length + state.missing.length} VM(s): remove them first (or delete with --unprotect)`, 'InvalidInput');
      }
    },
  });
  show();

  while (!ending && !historyTooLong()) {
    if (dirty) {
      dirty = false;
      const reapply = policyChanged;
      policyChanged = false;
      reconciling = true;
      try {
        const r = await acts.reconcileGroup({ name: state.name, policy: state.policy, members: state.members, protected: state.protected, missing: state.missing, reapply });
        state.protected = r.protected;
        state.missing = r.missing;
        state.refused = r.refused;
        state.silentHosts = r.silentHosts;
        state.lastReconcile = { at: new Date().toISOString() };
      } catch (err) {
        state.lastReconcile = { at: new Date().toISOString(), error: innermostMessage(err) };
      } finally {
        reconciling = false;
      }
      show();
    }
    const next = await condition(() => dirty || ending, state.reconcileEveryMs ?? 5 * 60_000);
    if (!next) dirty = true;
  }
  await condition(() => allHandlersFinished() && !reconciling);
  if (ending) return;
  await makeContinueAsNewFunc<typeof protectionGroup>()(state);

  function validMembers(members: GroupMember[]): void {
    for (const m of members) {
      if (!['vm', 'host', 'cluster'].includes(m.kind) || !m.name?.trim()) {
        throw ApplicationFailure.nonRetryable(`a member is a VM, a host or a cluster with a name (got ${JSON.stringify(m)})`, 'InvalidInput');
      }
    }
  }

  function show(): void {
    upsertMemo({ group: state.name, server: state.policy.server, members: state.members.length, protected: state.protected.length, missing: state.missing.length });
    upsertSearchAttributes([{ key: SA.server, value: state.policy.server }]);
  }
}

function historyTooLong(): boolean {
  const info = workflowInfo();
  return info.continueAsNewSuggested || info.historyLength > 2000;
}

setWorkflowOptions({ versioningBehavior: 'AUTO_UPGRADE' }, protectionGroup);
