// Backup checkpoints on real VHDX disks while a guest write load (a child process) keeps writing.
import { promises as fsp } from 'node:fs';
import { Lab, LabHypervisor, type WriteLoadResult, expectedDiskContent, guestWriteRanges, initialDiskContent } from '../../hypervisor/lab';
import { mergeRanges } from '../../hypervisor/lab/change-tracking';
import { openVhdx } from '../../vhdx';
import { MiB, expectSameBytes, readAll, tempLab, waitFor } from './helpers';

const SIZE = 4 * MiB;
const content = { kind: 'random' as const, seed: 7, fill: 0.6 };

describe('backup checkpoint with a guest write load', () => {
  let lab: Lab;
  let cleanup: () => Promise<void>;
  let hv: LabHypervisor;
  beforeAll(async () => {
    ({ lab, cleanup } = await tempLab());
    await lab.createHost('hv1');
    hv = await LabHypervisor.open(lab, 'hv1');
  });
  afterAll(() => cleanup());

  const writesOf = async (vmId: string) => (await lab.getVm(vmId)).writeLoad?.writes ?? 0;

  it('freezes the parent at checkpoint time, tracks exactly the written ranges, and merges back', async () => {
    const vm = await lab.createVm({ name: 'web01', host: 'hv1', disks: [{ sizeBytes: SIZE, blockSize: MiB, content }] });
    const initial = initialDiskContent(content, SIZE);
    expectSameBytes(await lab.readDisk(vm.vmId, 'scsi0-0', 0, SIZE), initial, 'initial disk');

    // A first backup: its checkpoint, once released, becomes the reference point.
    const c0 = await hv.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    const r0 = await hv.openCheckpointDisk(vm.vmId, c0.checkpointId, 'scsi0-0');
    expectSameBytes(await readAll(r0), initial, 'first checkpoint');
    await r0.close();
    await hv.releaseCheckpoint(vm.vmId, c0.checkpointId);
    const ref = (await hv.inspectVm(vm.vmId)).disks[0].changeTrackingId!;
    expect(ref).toBe(c0.disks[0].changeTrackingId);

    const seed = 4242;
    let result: WriteLoadResult | undefined;
    const load = await lab.startWriteLoad({ vm: vm.vmId, seed, intervalMs: 5, batch: 3 });
    try {
      await waitFor(async () => (await writesOf(vm.vmId)) >= 12, 'first writes');
      const ckpt = await hv.createBackupCheckpoint(vm.vmId, { mode: 'online', label: 'backup/web01/1' });
      expect(ckpt.guestWriteSeq).toBeGreaterThanOrEqual(12);
      // A retried activity gets the same checkpoint back.
      expect((await hv.createBackupCheckpoint(vm.vmId, { mode: 'online', label: 'backup/web01/1' })).checkpointId).toBe(ckpt.checkpointId);
      const facts = await hv.inspectVm(vm.vmId);
      expect(facts.disks[0].path).toMatch(/\.avhdx$/);
      expect(facts.disks[0].basePath).toBe(ckpt.disks[0].frozenPath);
      expect(facts.checkpoints).toEqual([{ checkpointId: ckpt.checkpointId, createdAt: ckpt.createdAt, kind: 'backup', label: 'backup/web01/1' }]);

      // The guest keeps writing, into the AVHDX.
      await waitFor(async () => (await writesOf(vm.vmId)) >= ckpt.guestWriteSeq! + 15, 'writes after the checkpoint');
      const reader = await hv.openCheckpointDisk(vm.vmId, ckpt.checkpointId, 'scsi0-0');
      expect(reader.virtualSize).toBe(SIZE);
      expectSameBytes(await readAll(reader), expectedDiskContent(initial, seed, ckpt.guestWriteSeq!), 'frozen parent');
      const alloc = await reader.allocatedRanges();
      expect(alloc.length).toBeGreaterThan(0);
      await reader.close();

      const changed = await hv.changedRanges(vm.vmId, ckpt.checkpointId, 'scsi0-0', ref);
      expect(changed).toEqual({ tracked: true, ranges: mergeRanges(guestWriteRanges(seed, 0, ckpt.guestWriteSeq!, SIZE)) });

      expect(await hv.releaseCheckpointsByLabel(vm.vmId, 'backup/web01/other')).toEqual([]);
      expect(await hv.releaseCheckpointsByLabel(vm.vmId, 'backup/web01/1')).toEqual([ckpt.checkpointId]);
      expect(await hv.releaseCheckpointsByLabel(vm.vmId, 'backup/web01/1')).toEqual([]);
      await hv.releaseCheckpoint(vm.vmId, ckpt.checkpointId); // idempotent
      expect((await hv.inspectVm(vm.vmId)).disks[0].path).toMatch(/scsi0-0\.vhdx$/);
      await waitFor(async () => (await writesOf(vm.vmId)) >= ckpt.guestWriteSeq! + 30, 'writes after the merge');
    } finally {
      result = await load.stop();
    }
    if (!result) throw new Error('no result');
    expect(result.stopReason).toBe('signal');
    expect(result.writes).toBe(await writesOf(vm.vmId));
    const disk = await openVhdx((await hv.inspectVm(vm.vmId)).disks[0].path);
    try {
      expectSameBytes(await disk.read(0, SIZE), expectedDiskContent(initial, seed, result.writes), 'merged disk');
    } finally {
      await disk.close();
    }
    const files = await fsp.readdir((await hv.inspectVm(vm.vmId)).configPath);
    expect(files.sort()).toEqual(['scsi0-0.rct', 'scsi0-0.vhdx']);
  });
});
