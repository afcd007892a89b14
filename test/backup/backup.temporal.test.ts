// The backup procedure end to end on the real dev server, real lab hosts with real VHDX disks,
// real HTTP to the storage API: every assertion is about bytes.
import type { WorkflowHandle } from '@temporalio/client';
import { locateProbes, startTestStack, restoredBytes as sharedRestoredBytes, startBackup as sharedStartBackup, type TestStack } from '../support/stack';
import { expectedDiskContent, initialDiskContent } from '../../hypervisor/lab';
import type { BackupVmInput, BackupVmResult } from '../../workflows/backup-vm';
import { SA } from '../../temporal/search-attribute-keys';
import { readWorkflowRun } from '../load/history';
import { connectClient } from '../../temporal/connection';
import type { HypervisorAdapter } from '../../hypervisor/types';
import { runCli } from '../support/cli';
import { JobRefused, protectVm, removeProtection, startBackupNow } from '../../client/protection';
import { protectionStateQuery, protectionWorkflowId } from '../../workflows/protection';

const MiB = 1024 * 1024;
const DISK = 24 * MiB;
let stack: TestStack;

/** VMs whose backup checkpoint waits until the promise given here settles (a backup held running). */
const holdCheckpoint = new Map<string, Promise<void>>();

function holding(_host: string, a: HypervisorAdapter): HypervisorAdapter {
  return new Proxy(a, {
    get(target, prop, receiver) {
      if (prop === 'createBackupCheckpoint') {
        return async (vmId: string, opts: Parameters<HypervisorAdapter['createBackupCheckpoint']>[1]) => {
          await holdCheckpoint.get(vmId);
          return target.createBackupCheckpoint(vmId, opts);
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

beforeAll(async () => {
  stack = await startTestStack({ hosts: ['hv01', 'hv02'], fileServers: ['fs01'], batchSlots: 8, wrapAdapter: holding });
});
afterAll(async () => {
  await stack?.stop();
});

const restoredBytes = (ds: string, pointId: string, diskId: string) => sharedRestoredBytes(stack, ds, pointId, diskId);

const startBackup = (input: BackupVmInput): Promise<WorkflowHandle> => sharedStartBackup(stack, input, { heartbeatTimeout: '10 seconds' });

async function backup(input: BackupVmInput): Promise<BackupVmResult> {
  return (await startBackup(input)).result();
}

test('initial replica, then express full, while the guest keeps writing: each point restores to the disk at checkpoint time', async () => {
  const content = { kind: 'random' as const, seed: 11, fill: 0.6 };
  const facts = await stack.lab.createVm({ name: 'web01', host: 'hv01', disks: [{ sizeBytes: DISK, content }] });
  const diskId = facts.disks[0].diskId;
  const initial = initialDiskContent(content, DISK);
  const load = await stack.lab.startWriteLoad({ vm: 'web01', seed: 7, intervalMs: 50, batch: 1 });
  try {
    const first = await backup({ dataSource: 'web01', vm: facts.vmId });
    expect(first).toMatchObject({ kind: 'initial-replica', mode: 'online', host: 'hv01' });
    const p1 = await stack.server.repository.getPoint('web01', first.pointId);
    const seq1 = Number(p1.annotations.guestWriteSeq);
    expect(seq1).toBeGreaterThanOrEqual(0);
    expect((await restoredBytes('web01', first.pointId, diskId)).equals(expectedDiskContent(initial, 7, seq1))).toBe(true);

    await new Promise((r) => setTimeout(r, 300)); // let the guest write more
    const second = await backup({ dataSource: 'web01', vm: facts.vmId });
    expect(second.kind).toBe('express-full');
    const p2 = await stack.server.repository.getPoint('web01', second.pointId);
    const seq2 = Number(p2.annotations.guestWriteSeq);
    expect(seq2).toBeGreaterThan(seq1);
    expect((await restoredBytes('web01', second.pointId, diskId)).equals(expectedDiskContent(initial, 7, seq2))).toBe(true);
    // Express full reads only what changed, not the disk.
    expect(second.disks[0].fallbackReason).toBeUndefined();
    expect(second.disks[0].bytesRead).toBeLessThan(DISK / 2);
    // The first point is untouched by the second.
    expect((await restoredBytes('web01', first.pointId, diskId)).equals(expectedDiskContent(initial, 7, seq1))).toBe(true);
  } finally {
    await load.stop();
  }
  // No checkpoint left behind; the VM runs.
  const after = await stack.lab.inspectVm('web01');
  expect(after.checkpoints).toEqual([]);
  expect(after.state).toBe('running');
});

test('a Linux guest is backed up offline: paused for the checkpoint, resumed, downtime recorded', async () => {
  const content = { kind: 'random' as const, seed: 5, fill: 0.3 };
  const facts = await stack.lab.createVm({
    name: 'db-linux',
    host: 'hv02',
    guestOs: 'Ubuntu 22.04',
    guestOsFamily: 'linux',
    volumes: [{ name: '/', fileSystem: 'ext4', dynamicDisk: false }],
    disks: [{ sizeBytes: 8 * MiB, content }],
  });
  const handle = await startBackup({ dataSource: 'db-linux', vm: facts.vmId, policy: { offlineMethod: 'pause' } });
  const r = (await handle.result()) as BackupVmResult;
  expect(r.mode).toBe('offline');
  expect(r.modeReasons.join('; ')).toMatch(/no VSS writer/);
  expect(typeof r.downtimeMs).toBe('number');
  // The point records the consistency the checkpoint achieved: the VM was paused, crash-consistent.
  expect((await stack.server.repository.getPoint('db-linux', r.pointId)).backup.consistency).toEqual({ achieved: 'crash-consistent' });
  const after = await stack.lab.inspectVm('db-linux');
  expect(after.state).toBe('running');
  expect(after.checkpoints).toEqual([]);
  const described = await handle.describe();
  expect(described.typedSearchAttributes.get(SA.mode)).toBe('offline');
  expect(described.typedSearchAttributes.get(SA.host)).toBe('hv02');
  expect(described.typedSearchAttributes.get(SA.kind)).toBe('initial-replica');
  expect((await restoredBytes('db-linux', r.pointId, facts.disks[0].diskId)).equals(initialDiskContent(content, 8 * MiB))).toBe(true);

  // Prometheus sees the point, its bytes and the downtime.
  const metrics = await (await fetch(stack.server.metricsUrl!)).text();
  expect(metrics).toMatch(/hvprotect_recovery_points_total\{datasource="db-linux",kind="initial-replica",mode="offline"\} 1/);
  expect(metrics).toMatch(/hvprotect_offline_downtime_seconds_count\{datasource="db-linux"\} 1/);
  expect(metrics).toMatch(/hvprotect_bytes_read_total\{datasource="db-linux",host="hv02"\} [1-9]/);
});

test('a policy that forbids offline fails the backup and leaves the VM running untouched', async () => {
  const facts = await stack.lab.createVm({
    name: 'nfs-linux',
    host: 'hv01',
    guestOs: 'Debian 12',
    guestOsFamily: 'linux',
    disks: [{ sizeBytes: 4 * MiB }],
  });
  await expect(backup({ dataSource: 'nfs-linux', vm: facts.vmId, policy: { allowOffline: false } })).rejects.toThrow();
  const after = await stack.lab.inspectVm('nfs-linux');
  expect(after.state).toBe('running');
  expect(after.checkpoints).toEqual([]);
  expect(await stack.server.repository.listPoints('nfs-linux')).toEqual([]);
});

test('a VM whose disk never held data gets a point that restores as zeros', async () => {
  const facts = await stack.lab.createVm({ name: 'blank', host: 'hv01', disks: [{ sizeBytes: 3 * MiB }] });
  const r = await backup({ dataSource: 'blank', vm: facts.vmId });
  expect(r.kind).toBe('initial-replica');
  expect((await restoredBytes('blank', r.pointId, facts.disks[0].diskId)).equals(Buffer.alloc(3 * MiB))).toBe(true);
  const again = await backup({ dataSource: 'blank', vm: facts.vmId });
  expect(again.kind).toBe('express-full');
  expect(again.disks[0].bytesRead).toBe(0);
});

test("a disk on an SMB share is read by the file server's agent", async () => {
  const content = { kind: 'random' as const, seed: 13, fill: 0.5 };
  const facts = await stack.lab.createVm({
    name: 'smb-vm',
    host: 'hv02',
    storage: { smb: { fileServer: 'fs01', share: 'vms' } },
    disks: [{ sizeBytes: 6 * MiB, content }],
  });
  expect(facts.disks[0]).toMatchObject({ storage: 'smb', fileServer: 'fs01' });
  const r = await backup({ dataSource: 'smb-vm', vm: facts.vmId });
  expect(r.host).toBe('hv02');
  expect(r.disks[0].readBy).toBe('fs01');
  expect((await restoredBytes('smb-vm', r.pointId, facts.disks[0].diskId)).equals(initialDiskContent(content, 6 * MiB))).toBe(true);
  expect((await stack.lab.inspectVm('smb-vm')).checkpoints).toEqual([]);
});

test('a Hyper-V Replica copy is backed up on the replica server without pausing anything', async () => {
  const content = { kind: 'random' as const, seed: 17, fill: 0.4 };
  const primary = await stack.lab.createVm({ name: 'erp01', host: 'hv01', disks: [{ sizeBytes: 4 * MiB, content }] });
  const replica = await stack.lab.enableReplication('erp01', 'hv02');
  expect(replica.replica.role).toBe('replica');
  const before = await stack.lab.inspectVm(replica.vmId);
  const r = await backup({ dataSource: 'erp01-replica', vm: replica.vmId, role: 'replica' });
  expect(r.host).toBe('hv02');
  expect(r.modeReasons.join()).toMatch(/Replica secondary/);
  expect(r.downtimeMs ?? 0).toBe(0);
  const after = await stack.lab.inspectVm(replica.vmId);
  expect(after.state).toBe(before.state);
  expect(after.checkpoints).toEqual([]);
  expect((await stack.lab.inspectVm(primary.vmId)).state).toBe('running');
  expect((await restoredBytes('erp01-replica', r.pointId, replica.disks[0].diskId)).equals(initialDiskContent(content, 4 * MiB))).toBe(true);
});

test('two clients ask for a backup of one VM in the same instant: one runs, the other is told what runs', async () => {
  const facts = await stack.lab.createVm({ name: 'twins', host: 'hv01', disks: [{ sizeBytes: 4 * MiB, content: { kind: 'random', seed: 19, fill: 1 } }] });
  await protectVm(stack.client, { server: stack.server.id, vm: { vmId: facts.vmId, name: 'twins', host: 'hv01', state: 'running' }, dataSource: 'twins', schedule: { everyHours: 24 } });
  const second = await connectClient(stack.temporal);
  const started: WorkflowHandle[] = [];
  try {
    for (let round = 0; round < 3; round++) {
      // The backup that runs is held at its checkpoint until both asks are answered: a 4 MiB backup
      // can otherwise end before the other client's ask arrives, and then both rightly run.
      let release!: () => void;
      holdCheckpoint.set(facts.vmId, new Promise<void>((r) => (release = r)));
      const asks = Promise.allSettled([startBackupNow(stack.client, { dataSource: 'twins' }, 'auto', 'client A'), startBackupNow(second, { dataSource: 'twins' }, 'auto', 'client B')]);
      const [a, b] = await asks.finally(() => {
        release();
        holdCheckpoint.delete(facts.vmId);
      });
      for (const s of [a, b]) if (s.status === 'fulfilled') started.push(s.value);
      expect([a.status, b.status].sort()).toEqual(['fulfilled', 'rejected']);
      const refused = (a.status === 'rejected' ? a : (b as PromiseRejectedResult)).reason as Error;
      expect(refused).toBeInstanceOf(JobRefused);
      expect(refused.message).toMatch(/a backup of twins is running on .* \(backup\/twins\/.*, started by client [AB] at .*\): one backup, check or original-place restore at a time/);
      const ran = (a.status === 'fulfilled' ? a : (b as PromiseFulfilledResult<WorkflowHandle>)).value;
      // The next round asks at once: the protection may not have recorded this one's end yet.
      await ran.result();
    }
  } finally {
    // A failed assertion above leaves a backup running; removing the protection would be refused
    // and that refusal would hide the failure: the backups that started end first.
    await Promise.allSettled(started.map((h) => h.result()));
    await second.connection.close();
    await removeProtection(stack.client, 'twins');
  }
  expect(await stack.server.repository.listPoints('twins')).toHaveLength(3);
});

test('asked again the moment a backup has ended, the protection runs it; removed while one runs, nothing changes', async () => {
  const facts = await stack.lab.createVm({ name: 'again', host: 'hv02', disks: [{ sizeBytes: 4 * MiB, content: { kind: 'random', seed: 23, fill: 1 } }] });
  await protectVm(stack.client, { server: stack.server.id, vm: { vmId: facts.vmId, name: 'again', host: 'hv02', state: 'running' }, dataSource: 'again', schedule: { everyHours: 24 } });
  const schedule = stack.client.schedule.getHandle('protect/again');
  // Each ask comes as the previous backup's result is out, before the protection has (most
  // often) recorded its end: each must run, not be refused naming the backup that has ended.
  const jobs: WorkflowHandle[] = [];
  for (let round = 0; round < 5; round++) {
    jobs.push(await startBackupNow(stack.client, { dataSource: 'again' }, 'auto', 'test'));
    await jobs[round].result();
  }
  expect(await stack.server.repository.listPoints('again')).toHaveLength(5);
  // The protection remembers where its last backup found the VM, and the next one asks that host
  // at once, beside the agent list (the first had nothing to go by).
  expect((await stack.client.workflow.getHandle(protectionWorkflowId('again')).query(protectionStateQuery)).lastHost).toBe('hv02');
  expect((await locateProbes(stack.client, jobs[0])).probedBeforeListed).toBe(false);
  expect((await locateProbes(stack.client, jobs[4])).probedBeforeListed).toBe(true);

  // Removing the protection while a backup runs is refused, naming it, and leaves the schedule.
  let release!: () => void;
  holdCheckpoint.set(facts.vmId, new Promise<void>((r) => (release = r)));
  const running = await startBackupNow(stack.client, { dataSource: 'again' }, 'auto', 'test');
  try {
    const refused = await removeProtection(stack.client, 'again').then(() => undefined, (err: Error) => err);
    expect(refused).toBeInstanceOf(JobRefused);
    expect((refused as JobRefused).running?.workflowId).toBe(running.workflowId);
    expect((await schedule.describe()).scheduleId).toBe('protect/again');
  } finally {
    release();
    holdCheckpoint.delete(facts.vmId);
  }
  // The moment it has ended, removing goes through, schedule and all.
  await running.result();
  await removeProtection(stack.client, 'again');
  await expect(schedule.describe()).rejects.toThrow(/not found/i);
  expect(await stack.server.repository.listPoints('again')).toHaveLength(6);
});

test('a remove cut short after the protection ended leaves a schedule that the next remove takes away', async () => {
  const facts = await stack.lab.createVm({ name: 'halfgone', host: 'hv01', disks: [{ sizeBytes: 2 * MiB, content: { kind: 'random', seed: 29, fill: 1 } }] });
  await protectVm(stack.client, { server: stack.server.id, vm: { vmId: facts.vmId, name: 'halfgone', host: 'hv01', state: 'running' }, dataSource: 'halfgone', schedule: { everyHours: 24 } });
  // As if the remove's first step (the protection) went through and it stopped before the second.
  await stack.client.workflow.getHandle('protection/halfgone').terminate('test: remove cut short');
  const schedule = stack.client.schedule.getHandle('protect/halfgone');
  expect((await schedule.describe()).scheduleId).toBe('protect/halfgone');
  // `protect remove` by the data source's name finds it and takes it away.
  const removed = await runCli(stack, ['protect', 'remove', 'halfgone']);
  expect(removed.stderr).toBe('');
  expect(removed.stdout).toBe('removed protection of halfgone; its recovery points are kept\n');
  await expect(schedule.describe()).rejects.toThrow(/not found/i);
  // Nothing left: another remove says so.
  await expect(removeProtection(stack.client, 'halfgone')).rejects.toThrow(/halfgone is not protected/);
  const again = await runCli(stack, ['protect', 'remove', 'halfgone']);
  expect(again.code).not.toBe(0);
  expect(again.stderr).toMatch(/"halfgone" is not a protected VM/);
});

test('the disks of one VM transfer at once, and each restores to its own content', async () => {
  const contents = [11, 12, 13].map((seed) => ({ kind: 'random' as const, seed, fill: 0.5 }));
  const facts = await stack.lab.createVm({ name: 'db01', host: 'hv02', disks: contents.map((content) => ({ sizeBytes: 8 * MiB, content })) });
  const handle = await startBackup({ dataSource: 'db01', vm: facts.vmId });
  const result: BackupVmResult = await handle.result();
  const run = await readWorkflowRun(stack.client, handle.workflowId);
  const transfers = run.activities.filter((a) => a.activityType === 'transferDisk');
  expect(transfers).toHaveLength(3);
  // All three were scheduled before the first of them finished: not one after another.
  expect(Math.max(...transfers.map((t) => t.scheduledAt))).toBeLessThanOrEqual(Math.min(...transfers.map((t) => t.closedAt ?? Infinity)));
  for (const [i, d] of facts.disks.entries()) {
    expect((await restoredBytes('db01', result.pointId, d.diskId)).equals(initialDiskContent(contents[i], 8 * MiB))).toBe(true);
  }
});
