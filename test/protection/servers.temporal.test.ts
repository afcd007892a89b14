// Two protection servers on one Temporal namespace, three lab hosts (a two-node cluster and a
// stand-alone host), agents serving both: each data source has one owner that runs its jobs and
// keeps its chain wherever the VM goes; a move starts a chain on the new owner and both restore.
import { randomUUID } from 'node:crypto';
import { startTestStack, restoredBytes, type TestStack } from '../support/stack';
import { initialDiskContent, type InitialContent } from '../../hypervisor/lab';
import type { VmFacts } from '../../hypervisor/types';
import type { BackupVmResult } from '../../workflows/backup-vm';
import { startServer } from '../../workers/server';
import { createLogger } from '../../log/logger';
import { listServers, moveProtection, protectVm, protectionState, startBackupNow, type ProtectionInfo } from '../../client/protection';

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
