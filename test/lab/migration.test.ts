// Live migration within and outside a cluster, with and without a backup checkpoint; replicas.
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { Lab, LabHypervisor, expectedDiskContent, guestWriteRanges, initialDiskContent, runGuestWriteLoad } from '../../hypervisor/lab';
import { mergeRanges } from '../../hypervisor/lab/change-tracking';
import { MiB, expectHvError, expectSameBytes, readAll, tempLab } from './helpers';

const SIZE = 2 * MiB;
const content = { kind: 'random' as const, seed: 21, fill: 1 };

describe('migration', () => {
  let lab: Lab;
  let root: string;
  let cleanup: () => Promise<void>;
  let n1: LabHypervisor, n2: LabHypervisor, solo: LabHypervisor;
  beforeAll(async () => {
    ({ lab, root, cleanup } = await tempLab());
    await lab.createCluster('clu1', ['n1', 'n2']);
    await lab.createHost('solo');
    [n1, n2, solo] = await Promise.all(['n1', 'n2', 'solo'].map((h) => LabHypervisor.open(lab, h)));
  });
  afterAll(() => cleanup());

  /** A clustered VM on the CSV with a reference point and `n` guest writes after it. */
  async function vmWithChanges(name: string, n: number) {
    const vm = await lab.createVm({ name, host: 'n1', storage: 'csv', disks: [{ sizeBytes: SIZE, blockSize: MiB, content }] });
    const c0 = await n1.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    await n1.releaseCheckpoint(vm.vmId, c0.checkpointId);
    await runGuestWriteLoad({ labRoot: root, vm: vm.vmId, seed: 99, intervalMs: 0, maxWrites: n });
    return { vm, ref: c0.disks[0].changeTrackingId };
  }

  it('reports cluster, CSV storage and owner node', async () => {
    const vm = await lab.createVm({ name: 'facts', host: 'n1', storage: 'csv', disks: [{ sizeBytes: SIZE }] });
    const f = await n1.inspectVm('facts');
    expect(f.cluster).toEqual({ name: 'clu1', groupState: 'online', ownerNode: 'n1', nodes: ['n1', 'n2'] });
    expect(f.disks[0]).toMatchObject({ storage: 'csv', passthrough: false, controller: 'scsi', virtualSize: SIZE });
    expect(f.disks[0].path.startsWith(path.join(root, 'clusters', 'clu1', 'csv', vm.vmId))).toBe(true);
    expect(await n1.listVms()).toEqual([expect.objectContaining({ vmId: vm.vmId, host: 'n1', cluster: 'clu1' })]);
    await lab.deleteVm(vm.vmId);
    expect(existsSync(f.disks[0].path)).toBe(false);
    await expectHvError(n1.inspectVm(vm.vmId), 'VmNotFound');
  });

  it('within the cluster moves ownership only; change tracking survives', async () => {
    const { vm, ref } = await vmWithChanges('inside', 10);
    const before = await n1.inspectVm(vm.vmId);
    const m = await lab.migrateVm(vm.vmId, 'n2');
    expect(m).toMatchObject({ withinCluster: true, moved: [], trackingLost: false });
    expect(await n1.isVmOnHost(vm.vmId)).toBe(false);
    expect(await n2.isVmOnHost(vm.vmId)).toBe(true);
    const e = await expectHvError(n1.inspectVm(vm.vmId), 'VmNotOnHost', /is on host n2, not on n1/);
    expect(e.details).toMatchObject({ vmId: vm.vmId, host: 'n2' });
    await expectHvError(n1.createBackupCheckpoint(vm.vmId, { mode: 'online' }), 'VmNotOnHost');
    const after = await n2.inspectVm(vm.vmId);
    expect(after.disks[0].path).toBe(before.disks[0].path);
    expect(after.cluster?.ownerNode).toBe('n2');
    expect((await lab.locateVm(vm.vmId)).host).toBe('n2');
    const ck = await n2.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    // A new agent process (a restart) opens the lab from disk alone.
    const restarted = await LabHypervisor.open(root, 'n2');
    expect(await restarted.changedRanges(vm.vmId, ck.checkpointId, 'scsi0-0', ref)).toEqual({
      tracked: true,
      ranges: mergeRanges(guestWriteRanges(99, 0, 10, SIZE)),
    });
    await n2.releaseCheckpoint(vm.vmId, ck.checkpointId);
  });

  it('outside the cluster moves the storage and loses change tracking', async () => {
    const { vm, ref } = await vmWithChanges('outside', 6);
    const before = await n1.inspectVm(vm.vmId);
    const m = await lab.migrateVm(vm.vmId, 'solo');
    expect(m.withinCluster).toBe(false);
    expect(m.trackingLost).toBe(true);
    const after = await solo.inspectVm(vm.vmId);
    expect(after.cluster).toBeUndefined();
    expect(after.disks[0].storage).toBe('local');
    expect(after.disks[0].path).toBe(path.join(root, 'hosts', 'solo', 'vms', vm.vmId, 'scsi0-0.vhdx'));
    expect(after.disks[0].changeTrackingId).toBeUndefined();
    expect(existsSync(before.disks[0].path)).toBe(false);
    expectSameBytes(await lab.readDisk(vm.vmId, 'scsi0-0', 0, SIZE), expectedDiskContent(initialDiskContent(content, SIZE), 99, 6));
    const ck = await solo.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    const ch = await solo.changedRanges(vm.vmId, ck.checkpointId, 'scsi0-0', ref);
    expect(ch.tracked).toBe(false);
    expect(ch.reason).toMatch(/reset/);
    // A new reference point starts a new chain of tracking on the new host.
    await solo.releaseCheckpoint(vm.vmId, ck.checkpointId);
    const ref2 = (await solo.inspectVm(vm.vmId)).disks[0].changeTrackingId!;
    await runGuestWriteLoad({ labRoot: root, vm: vm.vmId, seed: 99, intervalMs: 0, maxWrites: 9 });
    const ck2 = await solo.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    expect(await solo.changedRanges(vm.vmId, ck2.checkpointId, 'scsi0-0', ref2)).toEqual({
      tracked: true,
      ranges: mergeRanges(guestWriteRanges(99, 6, 9, SIZE)),
    });
    await solo.releaseCheckpoint(vm.vmId, ck2.checkpointId);
  });

  it('carries a backup checkpoint along, within and outside the cluster', async () => {
    const vm = await lab.createVm({ name: 'carried', host: 'n1', storage: 'csv', disks: [{ sizeBytes: SIZE, blockSize: MiB, content }] });
    const initial = initialDiskContent(content, SIZE);
    await runGuestWriteLoad({ labRoot: root, vm: vm.vmId, seed: 3, intervalMs: 0, maxWrites: 4 });
    const ck = await n1.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    expect(ck.guestWriteSeq).toBe(4);
    await runGuestWriteLoad({ labRoot: root, vm: vm.vmId, seed: 3, intervalMs: 0, maxWrites: 8 });

    await lab.migrateVm(vm.vmId, 'n2');
    await expectHvError(n1.openCheckpointDisk(vm.vmId, ck.checkpointId, 'scsi0-0'), 'VmNotOnHost');
    const r1 = await n2.openCheckpointDisk(vm.vmId, ck.checkpointId, 'scsi0-0');
    expectSameBytes(await readAll(r1), expectedDiskContent(initial, 3, 4), 'frozen after migration within the cluster');
    await r1.close();

    await lab.migrateVm(vm.vmId, 'solo');
    const f = await solo.inspectVm(vm.vmId);
    expect(f.checkpoints.map((c) => c.checkpointId)).toEqual([ck.checkpointId]);
    expect(path.dirname(f.disks[0].path)).toBe(path.join(root, 'hosts', 'solo', 'vms', vm.vmId));
    expect(f.disks[0].path).toMatch(/\.avhdx$/);
    const r2 = await solo.openCheckpointDisk(vm.vmId, ck.checkpointId, 'scsi0-0');
    expectSameBytes(await readAll(r2), expectedDiskContent(initial, 3, 4), 'frozen after migration outside the cluster');
    await r2.close();
    await runGuestWriteLoad({ labRoot: root, vm: vm.vmId, seed: 3, intervalMs: 0, maxWrites: 10 });
    await expectHvError(n2.releaseCheckpoint(vm.vmId, ck.checkpointId), 'VmNotOnHost');
    await solo.releaseCheckpoint(vm.vmId, ck.checkpointId);
    expectSameBytes(await lab.readDisk(vm.vmId, 'scsi0-0', 0, SIZE), expectedDiskContent(initial, 3, 10), 'merged after migrations');
  });

  it('creates a replica VM on the replica server, off, with the primary disks', async () => {
    const vm = await lab.createVm({ name: 'repl', host: 'solo', disks: [{ sizeBytes: SIZE, blockSize: MiB, content }] });
    const rep = await lab.enableReplication(vm.vmId, 'n1');
    expect(rep).toMatchObject({ host: 'n1', name: 'repl', state: 'off', replica: { role: 'replica', primaryServer: 'solo', replicaServer: 'n1' } });
    expect((await solo.inspectVm(vm.vmId)).replica).toEqual({ role: 'primary', replicaServer: 'n1' });
    // By name, each host sees its own VM.
    expect((await n1.inspectVm('repl')).vmId).toBe(rep.vmId);
    expect((await solo.inspectVm('repl')).vmId).toBe(vm.vmId);
    expect((await lab.inspectVm('repl')).vmId).toBe(vm.vmId); // without a host: the primary
    const ck = await n1.createBackupCheckpoint(rep.vmId, { mode: 'online' });
    const r = await n1.openCheckpointDisk(rep.vmId, ck.checkpointId, 'scsi0-0');
    expectSameBytes(await readAll(r), initialDiskContent(content, SIZE));
    await r.close();
    await n1.releaseCheckpoint(rep.vmId, ck.checkpointId);
    expect((await n1.inspectVm(rep.vmId)).state).toBe('off');
  });

  it('lets the file server agent read the disks on its shares', async () => {
    await lab.createHost('fs01', { fileServer: true });
    const fs = await LabHypervisor.open(lab, 'fs01');
    const vm = await lab.createVm({ name: 'smb', host: 'solo', storage: { smb: { fileServer: 'fs01', share: 'vms' } }, disks: [{ sizeBytes: SIZE, content }] });
    const f = await solo.inspectVm(vm.vmId);
    expect(f.disks[0]).toMatchObject({ storage: 'smb', fileServer: 'fs01' });
    expect(f.disks[0].path.startsWith(path.join(root, 'shares', 'fs01', 'vms', vm.vmId))).toBe(true);
    const ck = await solo.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    const r = await fs.openCheckpointDisk(vm.vmId, ck.checkpointId, 'scsi0-0');
    expectSameBytes(await readAll(r), initialDiskContent(content, SIZE));
    await r.close();
    await expectHvError(fs.inspectVm(vm.vmId), 'VmNotOnHost');
    await lab.migrateVm(vm.vmId, 'n2');
    expect((await n2.inspectVm(vm.vmId)).disks[0].path.startsWith(path.join(root, 'shares', 'fs01'))).toBe(true);
    await n2.releaseCheckpoint(vm.vmId, ck.checkpointId);
  });
});
