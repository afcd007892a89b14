// `hvprotect group`: protection groups (workflows/protection-group.ts) from the CLI.
import type { Client } from '@temporalio/client';
import { WorkflowExecutionAlreadyStartedError, WorkflowUpdateFailedError } from '@temporalio/client';
import { UsageError } from './errors';
import { chooseServer, checkTimeZone, dataSourceIdFor, removeProtection } from './protection';
import { serverTaskQueue } from '../temporal/task-queues';
import { SA } from '../temporal/search-attribute-keys';
import { protectionWorkflowId } from '../workflows/protection';
import {
  addMembersUpdate,
  deleteGroupUpdate,
  groupStateQuery,
  groupWorkflowId,
  reconcileSignal,
  removeMembersUpdate,
  sameMember,
  setPolicyUpdate,
  type GroupMember,
  type GroupPolicy,
  type GroupState,
} from '../workflows/protection-group';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function checkName(name: string): void {
  if (!NAME.test(name)) throw new UsageError(`group name "${name}": letters, digits, '.', '_' and '-', up to 64, starting with a letter or digit`);
}

function unwrap(err: unknown): never {
  if (err instanceof WorkflowUpdateFailedError) throw new UsageError((err.cause as Error | undefined)?.message ?? err.message);
  if ((err as Error).name === 'WorkflowNotFoundError') throw new UsageError('no such group (`hvprotect group list`)');
  throw err;
}

export async function groupState(client: Client, name: string): Promise<GroupState> {
  checkName(name);
  const h = client.workflow.getHandle(groupWorkflowId(name));
  const d = await h.describe().catch(unwrap);
  if (d.status.name !== 'RUNNING') throw new UsageError(`no group ${name} (\`hvprotect group list\`)`);
  return h.query(groupStateQuery);
}

export async function listGroups(client: Client): Promise<GroupState[]> {
  const out: GroupState[] = [];
  for await (const wf of client.workflow.list({ query: "WorkflowType = 'protectionGroup' AND ExecutionStatus = 'Running'" })) {
    // Visibility lags: a group deleted a moment ago may still be listed as running, so the
    // workflow's own status decides.
    const h = client.workflow.getHandle(wf.workflowId);
    if ((await h.describe().catch(() => undefined))?.status.name !== 'RUNNING') continue;
    const s = await h.query(groupStateQuery).catch(() => undefined);
    if (s) out.push(s);
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

/** Refuses members another group has: a VM in two groups, or a host or cluster twice. */
async function refuseTaken(client: Client, name: string, members: GroupMember[]): Promise<void> {
  const others = (await listGroups(client)).filter((g) => g.name !== name);
  for (const m of members) {
    const holder = others.find((g) => g.members.some((x) => sameMember(x, m)) || (m.kind === 'vm' && g.protected.some((v) => v.vm.toLowerCase() === m.name.toLowerCase() || v.vmId === m.name)));
    if (holder) throw new UsageError(`${m.kind} ${m.name} is in group ${holder.name}: a VM belongs to one group (\`hvprotect group remove ${holder.name} --${m.kind} ${m.name}\` first)`);
    if (m.kind === 'vm') {
      const d = await client.workflow.getHandle(protectionWorkflowId(dataSourceIdFor(m.name))).describe().catch(() => undefined);
      if (d?.status.name === 'RUNNING') {
        const g = (((await d.memo) ?? {}) as { group?: string }).group;
        if (g && g !== name) throw new UsageError(`VM ${m.name} is in group ${g}`);
        if (!g) throw new UsageError(`VM ${m.name} is protected on its own: \`hvprotect protect remove ${m.name}\` first (its points are kept), then add it to ${name}`);
      }
    }
  }
}

export async function createGroup(client: Client, o: { name: string; server?: string; policy: Omit<GroupPolicy, 'server'>; members: GroupMember[]; reconcileEveryMs?: number }): Promise<GroupState> {
  checkName(o.name);
  if (o.policy.timezone) checkTimeZone(o.policy.timezone);
  await refuseTaken(client, o.name, o.members);
  const server = await chooseServer(client, o.server);
  const state: GroupState = { name: o.name, policy: { ...o.policy, server }, members: o.members, protected: [], missing: [], refused: [], silentHosts: [], reconcileEveryMs: o.reconcileEveryMs };
  try {
    await client.workflow.start('protectionGroup', {
      workflowId: groupWorkflowId(o.name),
      taskQueue: serverTaskQueue(server),
      args: [state],
      staticSummary: `protection group ${o.name} on ${server}`,
      memo: { group: o.name, server },
      typedSearchAttributes: [{ key: SA.server, value: server }],
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) throw new UsageError(`group ${o.name} exists (\`hvprotect group show ${o.name}\`)`);
    throw err;
  }
  return state;
}

export async function addMembers(client: Client, name: string, members: GroupMember[]): Promise<GroupState> {
  checkName(name);
  await refuseTaken(client, name, members);
  return client.workflow.getHandle(groupWorkflowId(name)).executeUpdate(addMembersUpdate, { args: [members] }).catch(unwrap);
}

/** Takes members out; with `unprotect`, the VMs they protected stop being protected (points kept). */
export async function removeMembers(client: Client, name: string, members: GroupMember[], unprotect: boolean): Promise<GroupState> {
  const before = await groupState(client, name);
  const after = await client.workflow.getHandle(groupWorkflowId(name)).executeUpdate(removeMembersUpdate, { args: [members] }).catch(unwrap);
  if (unprotect) {
    // A group's VM records its host, not its cluster: a cluster member is taken to cover every VM
    // when it is removed, and none when it stays.
    type Vm = { vm: string; vmId: string; host: string };
    const coveredBy = (m: GroupMember, v: Vm): boolean | undefined =>
      m.kind === 'vm' ? m.name.toLowerCase() === v.vm.toLowerCase() || m.name === v.vmId : m.kind === 'host' ? m.name.toLowerCase() === v.host.toLowerCase() : undefined;
    for (const v of [...before.protected, ...before.missing]) {
      const wasCovered = members.some((m) => coveredBy(m, v) ?? true);
      const stillCovered = after.members.some((m) => coveredBy(m, v) ?? false);
      if (wasCovered && !stillCovered) await removeProtection(client, v.dataSource).catch(() => undefined);
    }
    await client.workflow.getHandle(groupWorkflowId(name)).signal(reconcileSignal);
  }
  return after;
}

export async function setGroupPolicy(client: Client, name: string, change: Partial<Omit<GroupPolicy, 'server'>>): Promise<GroupState> {
  checkName(name);
  if (change.timezone) checkTimeZone(change.timezone);
  return client.workflow.getHandle(groupWorkflowId(name)).executeUpdate(setPolicyUpdate, { args: [change] }).catch(unwrap);
}

export async function deleteGroup(client: Client, name: string, unprotect: boolean): Promise<void> {
  let s = await groupState(client, name);
  if (unprotect) {
    // Members first (the answer comes once no reconcile works with them), so none protects again.
    if (s.members.length) s = await client.workflow.getHandle(groupWorkflowId(name)).executeUpdate(removeMembersUpdate, { args: [s.members] }).catch(unwrap);
    for (const v of [...s.protected, ...s.missing]) await removeProtection(client, v.dataSource).catch(() => undefined);
    // Let the group see they are gone before it is asked to end.
    await client.workflow.getHandle(groupWorkflowId(name)).executeUpdate(setPolicyUpdate, { args: [{}] }).catch(unwrap);
    for (const deadline = Date.now() + 60_000; ; ) {
      const now = await groupState(client, name);
      if (!now.protected.length && !now.missing.length) break;
      if (Date.now() > deadline) throw new UsageError(`group ${name} still lists protected VMs after a minute; try again`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  const h = client.workflow.getHandle(groupWorkflowId(name));
  await h.executeUpdate(deleteGroupUpdate).catch(unwrap);
  // The update's answer comes before the workflow closes; once this returns, it is gone.
  await h.result().catch(() => undefined);
}
