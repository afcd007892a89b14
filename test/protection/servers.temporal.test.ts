// Two protection servers on one Temporal namespace, three lab hosts (a two-node cluster and a
// stand-alone host), agents serving both: each data source has one owner that runs its jobs and
// keeps its chain wherever the VM goes; a move starts a chain on the new owner and both restore.
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import * as path from 'node:path';
import { Client } from '@temporalio/client';
import { connectTemporal } from '../../temporal/connection';
import { startTestStack, restoredBytes, type TestStack } from '../support/stack';
import { initialDiskContent, type InitialContent } from '../../hypervisor/lab';
import type { VmFacts } from '../../hypervisor/types';
import type { BackupVmResult } from '../../workflows/backup-vm';
import { startServer } from '../../workers/server';
import { createLogger } from '../../log/logger';
import { chooseServer, describeProtection, listServers, moveProtection, protectVm, protectionState, protectionStatuses, startBackupNow, startJob, type ProtectionInfo } from '../../client/protection';
import type { RunningServer } from '../../workers/server';

const MiB = 1024 * 1024;
const DISK = 2 * MiB;
const suffix = randomUUID().slice(0, 6);
const IDS = [`dpma-${suffix}`, `dpmb-${suffix}`];
let stack: TestStack;
const vms: Array<{ facts: VmFacts; content: InitialContent; p: ProtectionInfo }> = [];

beforeAll(async () => {
  stack = await startTestStack({ hosts: ['hv01', 'hv02', 'hv03'], cluster: { name: 'clu1', nodes: ['hv01', 'hv02'] }, servers: IDS });
  for (let i = 0; i < 10; i++) {
    const host = ['hv01', 'hv02', 'hv03'][i % 3];
    const content: InitialContent = { kind: 'random', seed: 700 + i, fill: 1 };
    const facts = await stack.lab.createVm({ name: `ms-${i}`, host, storage: i === 0 ? 'csv' : undefined, disks: [{ sizeBytes: DISK, content }] });
    // Named (other test files' servers may still poll this namespace): half each.
    const p = await protectVm(stack.client, { vm: { vmId: facts.vmId, name: facts.name, host, state: 'running' }, dataSource: `ms-${i}-${suffix}`, server: IDS[i % 2], schedule: { everyHours: 24 } });
    vms.push({ facts, content, p });
  }
}, 120_000);
afterAll(async () => {
  await stack?.stop();
});

const serverById = (id: string) => stack.servers.find((s) => s.id === id)!;

/** Backs up every VM at once through its protection; waits until each protection is idle again. */
async function backupAll(): Promise<BackupVmResult[]> {
  const handles = await Promise.all(vms.map((v) => startBackupNow(stack.client, v.p, 'auto', 'test')));
  const results = (await Promise.all(handles.map((h) => h.result()))) as BackupVmResult[];
  for (const v of vms) while ((await protectionState(stack.client, v.p.dataSource)).running) await new Promise((r) => setTimeout(r, 50));
  return results;
}

test('ten VMs split over two servers, backed up at once and again after migrations inside and outside the cluster: every chain stays on its owner', async () => {
  expect(vms.map((v) => v.p.server)).toEqual(vms.map((_, i) => IDS[i % 2]));

  const first = await backupAll();
  // One VM live-migrates within the cluster, one leaves it for the stand-alone host.
  expect((await stack.lab.migrateVm('ms-0', 'hv02')).withinCluster).toBe(true);
  expect((await stack.lab.migrateVm('ms-1', 'hv03')).withinCluster).toBe(false);
  const second = await backupAll();

  for (const [i, v] of vms.entries()) {
    expect({ vm: v.facts.name, first: first[i].server, second: second[i].server }).toEqual({ vm: v.facts.name, first: v.p.server, second: v.p.server });
    const owner = serverById(v.p.server);
    const other = stack.servers.find((s) => s !== owner)!;
    const points = await owner.repository.listPoints(v.p.dataSource);
    expect(points.map((p) => p.pointId)).toEqual([first[i].pointId, second[i].pointId]);
    // Nothing of it ever landed on the other server.
    expect(await other.repository.listPoints(v.p.dataSource).catch(() => [])).toEqual([]);
    expect((await restoredBytes({ ...stack, server: owner }, v.p.dataSource, second[i].pointId, v.facts.disks[0].diskId)).equals(initialDiskContent(v.content, DISK))).toBe(true);
  }
  expect(second[0].host).toBe('hv02');
  expect(second[1]).toMatchObject({ host: 'hv03', kind: 'consistency-check' });
  // No session left open on either server.
  for (const sv of stack.servers) expect(await sv.repository.listSessions()).toEqual([]);
}, 240_000);

test('protect move: the new owner starts its own chain; both chains restore bit for bit', async () => {
  const v = vms[2];
  const from = v.p.server;
  const to = IDS.find((id) => id !== from)!;
  const before = (await (await startBackupNow(stack.client, v.p, 'auto', 'test')).result()) as BackupVmResult;
  while ((await protectionState(stack.client, v.p.dataSource)).running) await new Promise((r) => setTimeout(r, 50));
  const moved = await moveProtection(stack.client, v.p.dataSource, to);
  expect(moved.server).toBe(to);
  expect(moved.chains.map((c) => c.server)).toEqual([from, to]);
  const after = (await (await startBackupNow(stack.client, v.p, 'auto', 'test')).result()) as BackupVmResult;
  expect(after).toMatchObject({ server: to, kind: 'initial-replica' });
  const expected = initialDiskContent(v.content, DISK);
  const diskId = v.facts.disks[0].diskId;
  expect((await restoredBytes({ ...stack, server: serverById(from) }, v.p.dataSource, before.pointId, diskId)).equals(expected)).toBe(true);
  expect((await restoredBytes({ ...stack, server: serverById(to) }, v.p.dataSource, after.pointId, diskId)).equals(expected)).toBe(true);
  // The old chain is kept on the old owner until its retention lets it go.
  expect((await serverById(from).repository.listPoints(v.p.dataSource)).map((p) => p.pointId)).toContain(before.pointId);
}, 120_000);

test('a second server with the id of a running one (another repository) refuses to start, in one line', async () => {
  const err = await startServer({ id: IDS[0], logger: createLogger({ name: 'test', level: 'silent' }), temporal: stack.temporal, stateDir: `${stack.dir}/intruder`, apiPort: 0, registerSearchAttributes: false }).then(
    () => undefined,
    (e: Error) => e,
  );
  expect(err?.name).toBe('ServerIdConflict');
  expect(err?.message).toMatch(new RegExp(`^task queue hvprotect-server-${IDS[0]} is already polled by ${IDS[0]}/[0-9a-f]+@.* \\(another repository\\): .*give this one another --id$`));
  expect(err?.message).not.toContain('\n');
  // And the servers are still the two that run.
  const running = (await listServers(stack.client)).filter((s) => IDS.includes(s.id));
  expect(running.map((s) => [s.id, s.running, s.foreignPollers])).toEqual(IDS.map((id) => [id, true, []]));
});

test('two clients ask for a backup of one data source at the same moment: one runs, the other is told what runs and where', async () => {
  const v = vms[3];
  const connection = await connectTemporal({ address: stack.temporal.address });
  const second = new Client({ connection, namespace: stack.temporal.namespace });
  try {
    const asked = await Promise.allSettled([
      startJob(stack.client, v.p.dataSource, { kind: 'backup', by: 'admin-a' }),
      startJob(second, v.p.dataSource, { kind: 'backup', by: 'admin-b' }),
    ]);
    const ran = asked.filter((a) => a.status === 'fulfilled');
    const told = asked.filter((a): a is PromiseRejectedResult => a.status === 'rejected');
    expect([ran.length, told.length]).toEqual([1, 1]);
    const { job, handle } = (ran[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof startJob>>>).value;
    const refusal = told[0].reason as Error;
    // The refusal names the running job and where to watch it.
    expect(refusal.message).toContain(job.workflowId);
    expect(refusal.message).toMatch(/Web UI|hvprotect (status|jobs)|watch/i);
    expect(((await handle.result()) as BackupVmResult).server).toBe(v.p.server);
    while ((await protectionState(stack.client, v.p.dataSource)).running) await new Promise((r) => setTimeout(r, 50));
  } finally {
    await connection.close();
  }
}, 120_000);

describe('a server no agent holds a credential for', () => {
  let third: RunningServer;
  // Sorts before every other server id (other suites' stopped servers stay listed for a while).
  const THIRD = `000-${suffix}`;
  beforeAll(async () => {
    third = await startServer({ id: THIRD, logger: createLogger({ name: 'test', level: 'silent' }), temporal: stack.temporal, stateDir: path.join(stack.dir, 'server-third'), apiPort: 0, registerSearchAttributes: false });
    // The administrator issued hv01 a token on the new server but never gave it to the agent.
    await third.tokens.issue('hv01', 'agent');
    // Servers are found by their queues' pollers: wait until Temporal lists the new one.
    for (let i = 0; i < 200 && !(await listServers(stack.client)).some((sv) => sv.id === THIRD && sv.running); i++) await new Promise((r) => setTimeout(r, 100));
  });
  afterAll(async () => third?.shutdown());

  test('is the default for a new protection while it owns fewest; its backup fails ServerNotTrusted; doctor names the fix', async () => {
    // Owning nothing, the new server is the default choice for the next protection.
    expect(await chooseServer(stack.client)).toBe(THIRD);
    const facts = await stack.lab.createVm({ name: 'ms-untrusted', host: 'hv01', disks: [{ sizeBytes: DISK, content: { kind: 'random', seed: 799, fill: 1 } }] });
    const p = await protectVm(stack.client, { vm: { vmId: facts.vmId, name: facts.name, host: 'hv01', state: 'running' }, dataSource: `ms-untrusted-${suffix}`, schedule: { everyHours: 24 } });
    expect(p.server).toBe(THIRD);
    const failure = await (await startBackupNow(stack.client, p, 'auto', 'test')).result().then(() => undefined, (err: Error & { cause?: Error & { cause?: Error & { type?: string } } }) => err);
    expect(failure).toBeDefined();
    const chain: Array<{ message?: string; type?: string }> = [];
    for (let e: (Error & { cause?: unknown; type?: string }) | undefined = failure; e; e = e.cause as typeof e) chain.push({ message: e.message, type: e.type });
    expect(chain.map((c) => c.type)).toContain('ServerNotTrusted');
    expect(chain.map((c) => c.message).join(' | ')).toMatch(new RegExp(`${THIRD}.*--server ${THIRD}=`));
    // Nothing was left behind on the host: the checkpoint was released, the VM runs.
    const after = await stack.lab.inspectVm('ms-untrusted');
    expect(after.state).toBe('running');
    expect(after.checkpoints.filter((c) => c.kind === 'backup')).toEqual([]);
    expect(await third.repository.listSessions()).toEqual([]);
    // doctor reports every server and the agents, and flags the missing credential with its fix.
    const cli = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
    const r = spawnSync(process.execPath, [cli, 'doctor', '--json'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, TEMPORAL_ADDRESS: stack.temporal.address, TEMPORAL_NAMESPACE: stack.temporal.namespace, TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml' } });
    const report = JSON.parse(r.stdout) as { servers: Array<{ id: string; dataSources: string[]; running: boolean }>; agents: Array<{ host: string; servers: string[] }>; problems: string[] };
    for (const id of [...IDS, THIRD]) expect(report.servers.find((s) => s.id === id)).toMatchObject({ running: true });
    expect(report.servers.find((s) => s.id === THIRD)!.dataSources).toEqual([p.dataSource]);
    expect(report.agents.find((a) => a.host === 'hv01')!.servers).toEqual(expect.arrayContaining(IDS));
    expect(report.problems).toContain(`the agent on hv01 holds no credential for ${THIRD}, which owns VMs backed up on hv01: add --server ${THIRD}=TOKEN_FILE`);
  }, 180_000);
});

test('a protection whose server is stopped shows as not answering: WARNING with the reason, never OK or idle', async () => {
  const FOURTH = `zzz-${suffix}`;
  const fourth = await startServer({ id: FOURTH, logger: createLogger({ name: 'test', level: 'silent' }), temporal: stack.temporal, stateDir: path.join(stack.dir, 'server-fourth'), apiPort: 0, registerSearchAttributes: false });
  let stopped = false;
  try {
    for (let i = 0; i < 200 && !(await listServers(stack.client)).some((sv) => sv.id === FOURTH && sv.running); i++) await new Promise((r) => setTimeout(r, 100));
    const facts = await stack.lab.createVm({ name: 'ms-orphan', host: 'hv02', disks: [{ sizeBytes: DISK, content: { kind: 'random', seed: 811, fill: 1 } }] });
    const p = await protectVm(stack.client, { vm: { vmId: facts.vmId, name: facts.name, host: 'hv02', state: 'running' }, server: FOURTH, dataSource: `ms-orphan-${suffix}`, schedule: { everyHours: 24 } });
    // While its server runs, the protection answers for itself.
    expect((await describeProtection(stack.client, p.dataSource)).unanswered).toBeUndefined();
    stopped = true;
    await fourth.shutdown();
    const info = await describeProtection(stack.client, p.dataSource);
    expect(info.server).toBe(FOURTH);
    expect(info.running).toBeUndefined();
    expect(info.unanswered).toMatch(new RegExp(`did not answer its state query .*its server ${FOURTH} is down or too busy.*hvprotect doctor`));
    const rows = await protectionStatuses(stack.client);
    const row = rows.find((r) => r.dataSource === p.dataSource);
    expect(row).toMatchObject({ level: 'WARNING', server: FOURTH, vm: 'ms-orphan' });
    expect(row!.reason).toBe(info.unanswered);
    // The servers that run still answer for their own protections.
    const others = rows.filter((r) => IDS.includes(r.server));
    expect(others.length).toBeGreaterThan(0);
    for (const r of others) expect(r.reason).not.toMatch(/did not answer/);
  } finally {
    if (!stopped) await fourth.shutdown();
  }
}, 120_000);
