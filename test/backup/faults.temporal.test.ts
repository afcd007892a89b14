// Backups that finish by themselves: live migration mid-transfer, a kill -9 of the agent
// mid-transfer, and a failure after the checkpoint that must leave no checkpoint behind.
import type { WorkflowHandle } from '@temporalio/client';
import { failureOf, locateProbes, startTestStack, restoredBytes as sharedRestoredBytes, startBackup as sharedStartBackup, waitForTransfer, type TestStack } from '../support/stack';
import { initialDiskContent } from '../../hypervisor/lab';
import type { BackupVmInput, BackupVmResult } from '../../workflows/backup-vm';
import { hostTaskQueue } from '../../temporal/task-queues';

const MiB = 1024 * 1024;
let stack: TestStack;

beforeAll(async () => {
  // Small batches and a throttle so a transfer lasts long enough to be interrupted.
  stack = await startTestStack({
    hosts: ['hv01', 'hv02', 'hv03', 'hv04'],
    cluster: { name: 'clu1', nodes: ['hv01', 'hv02'] },
    agents: ['hv01', 'hv02', 'hv03'],
    batchSlots: 4,
    throttleBytesPerSecond: 8 * MiB,
  });
});
afterAll(async () => {
  await stack?.stop();
});

const restoredBytes = (ds: string, pointId: string, diskId: string) => sharedRestoredBytes(stack, ds, pointId, diskId);

const startBackup = (input: BackupVmInput): Promise<WorkflowHandle> => sharedStartBackup(stack, input, { heartbeatTimeout: '5 seconds', locateTimeout: '3 seconds', hostScheduleToStart: '20 seconds' });


test('live migration within the cluster mid-transfer: the backup finishes on the new owner', async () => {
  const content = { kind: 'random' as const, seed: 21, fill: 1 };
  const facts = await stack.lab.createVm({ name: 'csv-vm', host: 'hv01', storage: 'csv', disks: [{ sizeBytes: 32 * MiB, content }] });
  const handle = await startBackup({ dataSource: 'csv-vm', vm: facts.vmId });
  await waitForTransfer(handle, 2 * MiB);
  const moved = await stack.lab.migrateVm('csv-vm', 'hv02');
  expect(moved.withinCluster).toBe(true);
  const r = (await handle.result()) as BackupVmResult;
  expect(r.host).toBe('hv02');
  expect(r.relocations).toBeGreaterThanOrEqual(1);
  // The disk was read on the new owner, not finished on the old host with only the release moved.
  expect(r.disks[0].readBy).toBe('hv02');
  expect(r.disks[0].attemptBytesRead).toBeGreaterThan(0);
  // hv02 carried on where hv01 stopped (the position came along in the VmNotOnHost failure).
  expect(r.disks[0].resumedAfter).toBe('hv01');
  expect(r.disks[0].resumedFrom).toBeGreaterThan(0);
  expect(r.disks[0].attemptBytesRead).toBeLessThanOrEqual(30 * MiB);
  expect((await restoredBytes('csv-vm', r.pointId, facts.disks[0].diskId)).equals(initialDiskContent(content, 32 * MiB))).toBe(true);
  const after = await stack.lab.inspectVm('csv-vm');
  expect(after.host).toBe('hv02');
  expect(after.checkpoints).toEqual([]);
});

test('migration outside the cluster mid-transfer of an express full: finishes as a consistency check', async () => {
  const content = { kind: 'random' as const, seed: 22, fill: 1 };
  const facts = await stack.lab.createVm({ name: 'roamer', host: 'hv01', disks: [{ sizeBytes: 32 * MiB, content }] });
  const diskId = facts.disks[0].diskId;
  const first = (await (await startBackup({ dataSource: 'roamer', vm: facts.vmId })).result()) as BackupVmResult;
  expect(first.kind).toBe('initial-replica');
  // Change 8 MiB, then back up again (express full) and move the VM outside the cluster mid-way.
  const patch = Buffer.alloc(4 * MiB, 0xab);
  await stack.lab.writeDisk('roamer', diskId, 3 * MiB, patch);
  await stack.lab.writeDisk('roamer', diskId, 20 * MiB, patch);
  const handle = await startBackup({ dataSource: 'roamer', vm: facts.vmId });
  await waitForTransfer(handle, MiB);
  const moved = await stack.lab.migrateVm('roamer', 'hv03');
  expect(moved.withinCluster).toBe(false);
  const r = (await handle.result()) as BackupVmResult;
  expect(r.host).toBe('hv03');
  expect(r.kind).toBe('consistency-check');
  expect(r.disks[0].fallbackReason).toMatch(/change tracking lost/);
  // The express full's position means nothing to the consistency check: it starts over, and says so.
  expect(r.disks[0].startedOverBecause).toMatch(/express-full became consistency-check/);
  expect(r.disks[0].resumedFrom).toBe(0);
  const expected = initialDiskContent(content, 32 * MiB);
  patch.copy(expected, 3 * MiB);
  patch.copy(expected, 20 * MiB);
  expect((await restoredBytes('roamer', r.pointId, diskId)).equals(expected)).toBe(true);
  // Only what differs was sent: the 8 changed MiB, not the 32 MiB disk.
  expect(r.disks[0].bytesSent).toBeLessThanOrEqual(9 * MiB);

  // The next backup after the move cannot trust change tracking: it falls back on its own.
  const third = (await (await startBackup({ dataSource: 'roamer', vm: facts.vmId })).result()) as BackupVmResult;
  expect(third.kind).toBe('consistency-check');
  expect(third.disks[0].fallbackReason).toMatch(/change tracking lost/);
  expect((await restoredBytes('roamer', third.pointId, diskId)).equals(expected)).toBe(true);
});

test('kill -9 of the agent mid-transfer: the backup finishes after the agent restarts, without starting over', async () => {
  const content = { kind: 'random' as const, seed: 23, fill: 1 };
  const facts = await stack.lab.createVm({ name: 'killme', host: 'hv04', disks: [{ sizeBytes: 40 * MiB, content }] });
  let agent = await stack.spawnAgent('hv04', ['--batch-slots', '4', '--throttle', '8']);
  const handle = await startBackup({ dataSource: 'killme', vm: facts.vmId });
  await waitForTransfer(handle, 8 * MiB);
  agent.kill('SIGKILL');
  await new Promise((r) => agent.once('exit', r));
  agent = await stack.spawnAgent('hv04', ['--batch-slots', '4']);
  const r = (await handle.result()) as BackupVmResult;
  // The final attempt read exactly the slots after its heartbeat, not the disk again from zero.
  const d = r.disks[0];
  expect(d.readBy).toBe('hv04');
  expect(d.resumedFrom).toBeGreaterThan(0);
  expect(d.attemptBytesRead).toBe((d.chunkCount - d.resumedFrom) * ((40 * MiB) / d.chunkCount));
  expect(d.attemptBytesRead).toBeLessThan(40 * MiB);
  expect((await restoredBytes('killme', r.pointId, facts.disks[0].diskId)).equals(initialDiskContent(content, 40 * MiB))).toBe(true);
  expect((await stack.lab.inspectVm('killme')).checkpoints).toEqual([]);
  agent.kill('SIGTERM');
});

test('cancelled while its agent is dead: the transfer times out instead of hearing the cancel, and the backup still ends cancelled, nothing left', async () => {
  // bench/chaos (seed 15) found a backup cancelled while its agent could not hear it end FAILED
  // ("activity Heartbeat timeout") instead of cancelled.
  const facts = await stack.lab.createVm({ name: 'deafagent', host: 'hv04', disks: [{ sizeBytes: 40 * MiB, content: { kind: 'random', seed: 26, fill: 1 } }] });
  let agent = await stack.spawnAgent('hv04', ['--batch-slots', '4', '--throttle', '4']);
  const handle = await startBackup({ dataSource: 'deafagent', vm: facts.vmId });
  await waitForTransfer(handle, 4 * MiB);
  agent.kill('SIGKILL');
  await new Promise((r) => agent.once('exit', r));
  await handle.cancel();
  // The transfer's heartbeat times out (5 s here); the release then needs the agent back.
  await new Promise((r) => setTimeout(r, 8_000));
  agent = await stack.spawnAgent('hv04', ['--batch-slots', '4']);
  try {
    const failure = await failureOf(handle.result());
    expect((await handle.describe()).status.name).toBe('CANCELLED');
    expect(failure.text).toMatch(/cancel/i);
    const after = await stack.lab.inspectVm('deafagent');
    expect(after.checkpoints).toEqual([]);
    expect(after.state).toBe('running');
    expect(await stack.server.repository.listPoints('deafagent')).toEqual([]);
  } finally {
    agent.kill('SIGTERM');
  }
});

test('a failure after the checkpoint (shadow storage too small) leaves no checkpoint and no point', async () => {
  const facts = await stack.lab.createVm({ name: 'toobig', host: 'hv01', disks: [{ sizeBytes: 16 * MiB, content: { kind: 'random', seed: 24, fill: 1 } }] });
  await stack.server.repository.ensureDataSource('toobig');
  await stack.server.repository.addShadowStorage('toobig', '1MB');
  const handle = await startBackup({ dataSource: 'toobig', vm: facts.vmId });
  await expect(handle.result()).rejects.toThrow();
  const desc = await handle.describe();
  expect(desc.status.name).toBe('FAILED');
  const after = await stack.lab.inspectVm('toobig');
  expect(after.checkpoints).toEqual([]);
  expect(after.state).toBe('running');
  expect(await stack.server.repository.listPoints('toobig')).toEqual([]);
});

test('cancelling a backup mid-transfer releases its checkpoint', async () => {
  const facts = await stack.lab.createVm({ name: 'cancelme', host: 'hv02', storage: 'csv', disks: [{ sizeBytes: 32 * MiB, content: { kind: 'random', seed: 25, fill: 1 } }] });
  const handle = await startBackup({ dataSource: 'cancelme', vm: facts.vmId });
  await waitForTransfer(handle, 2 * MiB);
  await handle.cancel();
  await expect(handle.result()).rejects.toThrow();
  const deadline = Date.now() + 20_000;
  while ((await stack.lab.inspectVm('cancelme')).checkpoints.length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  expect((await stack.lab.inspectVm('cancelme')).checkpoints).toEqual([]);
  expect(await stack.server.repository.listPoints('cancelme')).toEqual([]);
});

test('the host the last backup found the VM on is asked at once; a wrong hint costs no relocation and no wait', async () => {
  const content = { kind: 'random' as const, seed: 31, fill: 1 };
  const facts = await stack.lab.createVm({ name: 'homebody', host: 'hv03', disks: [{ sizeBytes: 4 * MiB, content }] });
  // Without a hint the probes wait for the agent list; with the right one, hv03 is asked beside it.
  const plain = await startBackup({ dataSource: 'homebody', vm: facts.vmId });
  expect(((await plain.result()) as BackupVmResult).host).toBe('hv03');
  expect((await locateProbes(stack.client, plain)).probedBeforeListed).toBe(false);
  const hinted = await startBackup({ dataSource: 'homebody', vm: facts.vmId, lastHost: 'hv03' });
  const r1 = (await hinted.result()) as BackupVmResult;
  expect(r1).toMatchObject({ host: 'hv03', relocations: 0 });
  const h1 = await locateProbes(stack.client, hinted);
  expect(h1.probedBeforeListed).toBe(true);
  expect(h1.probes.filter((p) => p.queue === hostTaskQueue('hv03'))).toHaveLength(1);
  // No disk on an SMB share: the agent list is asked for once, by the locate round, not again for
  // choosing a file server's agent.
  expect(h1.listings).toBe(1);

  // The VM moved since: the hint's probe says no, the round's others find it; not a relocation.
  await stack.lab.migrateVm('homebody', 'hv01');
  const moved = await startBackup({ dataSource: 'homebody', vm: facts.vmId, lastHost: 'hv03' });
  expect((await moved.result()) as BackupVmResult).toMatchObject({ host: 'hv01', relocations: 0 });
  const h2 = (await locateProbes(stack.client, moved)).probes.map((p) => p.queue);
  expect(h2).toEqual(expect.arrayContaining(['hv01', 'hv03'].map(hostTaskQueue)));
  expect(h2.filter((q) => q === hostTaskQueue('hv03'))).toHaveLength(1); // the hinted host is not asked twice

  // A hint naming a host without an agent (hv09, never started) when the VM is nowhere to be found: the hint's
  // probe is cancelled once the agent list shows no agent there, instead of holding the round
  // for its 3-second locate timeout.
  const stale = await startBackup({ dataSource: 'homebody', vm: facts.vmId, lastHost: 'hv09' });
  const r3 = (await stale.result()) as BackupVmResult;
  expect(r3).toMatchObject({ host: 'hv01', relocations: 0 });
  const nowhere = await startBackup({ dataSource: 'ghost', vm: 'no-such-vm', lastHost: 'hv09', policy: { hostWaitTimeout: '1 second' } });
  expect((await failureOf(nowhere.result())).types).toContain('VmUnreachable');
  const h4 = await locateProbes(stack.client, nowhere);
  expect(h4.probes.find((p) => p.queue === hostTaskQueue('hv09'))?.ended).toBe('cancelled');
  const after = await stack.lab.inspectVm('homebody');
  expect(after.checkpoints).toEqual([]);
  for (const r of [r1, r3]) expect((await restoredBytes('homebody', r.pointId, facts.disks[0].diskId)).equals(initialDiskContent(content, 4 * MiB))).toBe(true);
});
