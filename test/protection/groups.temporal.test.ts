// Protection groups against the real dev server, driven through the CLI as an administrator would
// (workflows/protection-group.ts, activities/server/groups.ts, client/groups.ts):
// a group over a lab cluster and a host protects the VMs there (the cluster's roles, the host's VMs), then a VM created afterwards by
// itself; a VM deleted from the host is reported missing, still protected; a VM protected on its
// own is refused with the reason; a VM in one group is refused by another, naming the group; a
// policy change reaches the VMs' schedules, RPO and offline policy (`protect set` changes a VM
// protected on its own, and refuses one of a group); removing the cluster with --unprotect ends their
// protection; the group is deleted.
import { runCli, type CliResult } from '../support/cli';
import { startTestStack, type TestStack } from '../support/stack';
import { protectVm, protectionState } from '../../client/protection';
import { protectionWorkflowId } from '../../workflows/protection';
import type { GroupState } from '../../workflows/protection-group';

const MiB = 1024 * 1024;

let stack: TestStack;

function hvp(...args: string[]): Promise<CliResult> {
  return runCli(stack, args);
}

async function show(name: string): Promise<GroupState> {
  const r = await hvp('group', 'show', name, '--json');
  if (r.code !== 0) throw new Error(`group show ${name}: ${r.stderr}`);
  return JSON.parse(r.stdout) as GroupState;
}

async function until(what: string, ok: (g: GroupState) => boolean, name = 'gold', ms = 60_000): Promise<GroupState> {
  let g: GroupState | undefined;
  for (const deadline = Date.now() + ms; Date.now() < deadline; await new Promise((r) => setTimeout(r, 500))) {
    g = await show(name);
    if (ok(g)) return g;
  }
  throw new Error(`timed out waiting for ${what}: ${JSON.stringify(g)}`);
}

async function protectionStatus(ds: string): Promise<string | undefined> {
  return (await stack.client.workflow.getHandle(protectionWorkflowId(ds)).describe().catch(() => undefined))?.status.name;
}

const vms = (g: GroupState) => g.protected.map((v) => v.vm).sort();
const disk = (seed: number) => [{ sizeBytes: 2 * MiB, content: { kind: 'random' as const, seed, fill: 0.5 } }];

beforeAll(async () => {
  stack = await startTestStack({ hosts: ['hv01', 'hv02', 'hv03'], cluster: { name: 'c1', nodes: ['hv01', 'hv02'] } });
  await stack.lab.createVm({ name: 'ga1', host: 'hv01', storage: 'csv', disks: disk(1) });
  await stack.lab.createVm({ name: 'gh1', host: 'hv03', disks: disk(2) });
  const own = await stack.lab.createVm({ name: 'gown', host: 'hv03', disks: disk(3) });
  await protectVm(stack.client, { server: stack.server.id, vm: { vmId: own.vmId, name: 'gown', host: 'hv03', state: 'running' }, dataSource: 'gown', schedule: { everyHours: 24 } });
}, 180_000);

afterAll(async () => {
  await stack?.stop();
});

test('a group over a cluster and a host: protects what is there and what comes later, reports what vanished, refuses what others have', async () => {
  const made = await hvp('group', 'create', 'gold', '--cluster', 'c1', '--host', 'hv03', '--every', '24', '--retention-days', '7', '--server', stack.server.id, '--reconcile-seconds', '2');
  expect(made.stderr).toBe('');
  expect(made.stdout).toMatch(/group gold made on/);

  let g = await until('the VMs there protected', (x) => vms(x).join() === 'ga1,gh1' && x.refused.length === 1);
  expect(g.refused).toEqual([{ vm: 'gown', reason: expect.stringMatching(/protected on its own/) }]);
  const memo = (await (await stack.client.workflow.getHandle(protectionWorkflowId('ga1')).describe()).memo) as { group?: string };
  expect(memo.group).toBe('gold');
  expect((await stack.client.schedule.getHandle('protect/ga1').describe()).spec.intervals?.[0]?.every).toBe(24 * 3_600_000);

  // A clustered VM created later is protected by itself.
  await stack.lab.createVm({ name: 'ga2', host: 'hv02', storage: 'csv', disks: disk(4) });
  // A VM on a node that is not a cluster role is not the cluster's: not taken.
  await stack.lab.createVm({ name: 'glocal', host: 'hv02', disks: disk(5) });
  g = await until('the new VM protected', (x) => vms(x).join() === 'ga1,ga2,gh1');
  expect(await protectionStatus('ga2')).toBe('RUNNING');

  // A VM deleted from its host is reported missing: still protected, its points kept.
  await stack.lab.deleteVm('ga1');
  g = await until('the deleted VM reported', (x) => x.missing.some((v) => v.vm === 'ga1'));
  expect(vms(g)).toEqual(['ga2', 'gh1']);
  expect(await protectionStatus('ga1')).toBe('RUNNING');
  expect((await hvp('group', 'show', 'gold')).stdout).toMatch(/ga1 .*MISSING: no host reports it/);

  // A VM in one group is refused by another, naming the group; so is a host twice.
  const second = await hvp('group', 'create', 'silver', '--vm', 'ga2', '--server', stack.server.id);
  expect(second.code).not.toBe(0);
  expect(second.stderr).toMatch(/vm ga2 is in group gold/);
  const host = await hvp('group', 'create', 'silver', '--host', 'hv03', '--server', stack.server.id);
  expect(host.stderr).toMatch(/host hv03 is in group gold/);

  // A policy change reaches the group's VMs' schedules.
  expect((await hvp('group', 'set', 'gold', '--every', '12')).code).toBe(0);
  for (const deadline = Date.now() + 60_000; ; await new Promise((r) => setTimeout(r, 500))) {
    const every = (await stack.client.schedule.getHandle('protect/ga2').describe()).spec.intervals?.[0]?.every;
    if (every === 12 * 3_600_000) break;
    if (Date.now() > deadline) throw new Error(`schedule of ga2 not retimed: every ${every}`);
  }
  // So do its RPO (without one of its own: the new schedule's longest gap plus an hour) and its
  // offline policy: the protections of VMs it took before have them, not what they were made with.
  const policyOf = async (ds: string) => {
    const st = await protectionState(stack.client, ds);
    return { rpoHours: (st.rpoMs ?? 0) / 3_600_000, allowOffline: st.backup.policy?.allowOffline, offlineMethod: st.backup.policy?.offlineMethod };
  };
  const reaches = async (what: string, want: Awaited<ReturnType<typeof policyOf>>) => {
    for (const deadline = Date.now() + 60_000; ; await new Promise((r) => setTimeout(r, 500))) {
      const got = await Promise.all(['ga2', 'gh1'].map(policyOf));
      if (got.every((x) => JSON.stringify(x) === JSON.stringify(want))) return;
      if (Date.now() > deadline) throw new Error(`${what} did not reach the group's VMs: ${JSON.stringify(got)}`);
    }
  };
  await reaches('the schedule-derived RPO', { rpoHours: 13, allowOffline: true, offlineMethod: 'save' });
  expect((await hvp('group', 'set', 'gold', '--rpo', '6', '--no-offline', '--offline-method', 'pause')).code).toBe(0);
  await reaches('the RPO and offline policy', { rpoHours: 6, allowOffline: false, offlineMethod: 'pause' });
  // A VM of the group is changed through the group; one protected on its own by itself.
  const inGroup = await hvp('protect', 'set', 'ga2', '--rpo', '5');
  expect(inGroup.code).not.toBe(0);
  expect(inGroup.stderr).toMatch(/ga2 is protected by group gold, whose policy it follows: change that \(`hvprotect group set gold/);
  expect(await policyOf('ga2')).toEqual({ rpoHours: 6, allowOffline: false, offlineMethod: 'pause' });
  const own = await hvp('protect', 'set', 'gown', '--rpo', '30', '--offline-method', 'pause', '--json');
  expect(own.stderr).toBe('');
  expect(JSON.parse(own.stdout)).toEqual({ dataSource: 'gown', rpoMs: 30 * 3_600_000, allowOffline: true, offlineMethod: 'pause' });
  expect(await policyOf('gown')).toEqual({ rpoHours: 30, allowOffline: undefined, offlineMethod: 'pause' });
  expect((await hvp('protect', 'set', 'gown')).stderr).toMatch(/nothing to change: give --rpo, --offline, --no-offline or --offline-method/);

  // Removing the cluster with --unprotect ends the protection of its VMs; the host's stays.
  expect((await hvp('group', 'remove', 'gold', '--cluster', 'c1', '--unprotect')).code).toBe(0);
  expect(await protectionStatus('ga2')).toBe('COMPLETED');
  expect(await protectionStatus('ga1')).toBe('COMPLETED');
  g = await until('the cluster VMs gone from the group', (x) => vms(x).join() === 'gh1' && x.missing.length === 0);

  // Deleting a group that protects VMs is refused; with --unprotect it goes, and so do they.
  const refused = await hvp('group', 'delete', 'gold');
  expect(refused.stderr).toMatch(/gold still protects 1 VM/);
  expect((await hvp('group', 'delete', 'gold', '--unprotect')).code).toBe(0);
  expect(await protectionStatus('gh1')).toBe('COMPLETED');
  expect(JSON.parse((await hvp('group', 'list', '--json')).stdout)).toEqual([]);
  expect(await protectionStatus('gown')).toBe('RUNNING');
}, 300_000);
