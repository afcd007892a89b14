// A process killed while an offline VM is quiet for its checkpoint (crash point lab:checkpoint-quiesced):
// the retry by label finishes the checkpoint and resumes the VM; a release alone resumes it too.
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Lab, LabHypervisor, initialDiskContent } from '../../hypervisor/lab';
import { MiB, exitOf, expectSameBytes, readAll, spawnTsMain, tempLab } from './helpers';

const SIZE = 2 * MiB;
const content = { kind: 'random' as const, seed: 11, fill: 0.5 };
const CHILD = path.join(__dirname, 'fixtures', 'checkpoint-child.ts');

describe('crash between quiescing a VM and recording its checkpoint', () => {
  let lab: Lab;
  let cleanup: () => Promise<void>;
  let hv: LabHypervisor;
  beforeAll(async () => {
    ({ lab, cleanup } = await tempLab());
    await lab.createHost('hv1');
    hv = await LabHypervisor.open(lab, 'hv1');
  });
  afterAll(() => cleanup());

  async function crashQuiesced(name: string, method: 'pause' | 'save'): Promise<string> {
    const vm = await lab.createVm({ name, host: 'hv1', guestOsFamily: 'linux', disks: [{ sizeBytes: SIZE, content }, { sizeBytes: SIZE }] });
    const child = spawnTsMain(CHILD, [lab.root, 'hv1', vm.vmId, `backup/${name}/1`, method], ['ignore', 'ignore', 'pipe'], {
      HVPROTECT_CRASH_AT: 'lab:checkpoint-quiesced',
    });
    expect(await exitOf(child)).toBe('SIGKILL');
    // The crash landed in the window: VM quiet, checkpoint labelled, no disks recorded.
    const rec = await lab.getVm(vm.vmId);
    expect(rec.state).toBe(method === 'pause' ? 'paused' : 'saved');
    expect(rec.checkpoint).toMatchObject({ label: `backup/${name}/1`, pending: true, disks: [] });
    return vm.vmId;
  }

  it.each(['pause', 'save'] as const)('offline (%s): the retry with the same label returns a whole checkpoint and resumes the VM', async (method) => {
    const vmId = await crashQuiesced(`crash-retry-${method}`, method);
    const ckpt = await hv.createBackupCheckpoint(vmId, { mode: 'offline', offlineMethod: method, label: `backup/crash-retry-${method}/1` });
    expect(ckpt.disks.map((d) => d.diskId)).toEqual(['scsi0-0', 'scsi0-1']);
    expect(ckpt.downtimeMs).toBeGreaterThanOrEqual(0);
    const after = await lab.getVm(vmId);
    expect(after.state).toBe('running');
    expect(after.checkpoint?.pending).toBeUndefined();
    const reader = await hv.openCheckpointDisk(vmId, ckpt.checkpointId, 'scsi0-0');
    expectSameBytes(await readAll(reader), initialDiskContent(content, SIZE), 'frozen disk');
    await reader.close();
    // A second retry is the same checkpoint, and the VM stays running.
    expect((await hv.createBackupCheckpoint(vmId, { mode: 'offline', offlineMethod: method, label: `backup/crash-retry-${method}/1` })).checkpointId).toBe(ckpt.checkpointId);
    await hv.releaseCheckpoint(vmId, ckpt.checkpointId);
    expect((await lab.getVm(vmId)).state).toBe('running');
  });

  it('a release by label after the crash resumes the VM and leaves no differencing disk', async () => {
    const vmId = await crashQuiesced('crash-release', 'pause');
    // A differencing disk the killed attempt could have made before recording it.
    const rec = await lab.getVm(vmId);
    const folder = lab.paths.diskFolder(rec, rec.disks[0]);
    const orphan = path.join(folder, `scsi0-0-${rec.checkpoint!.checkpointId.slice(0, 8)}.avhdx`);
    await fsp.writeFile(orphan, 'half a disk');
    expect(await hv.releaseCheckpointsByLabel(vmId, 'backup/crash-release/1')).toEqual([rec.checkpoint!.checkpointId]);
    const after = await lab.getVm(vmId);
    expect(after.state).toBe('running');
    expect(after.checkpoint).toBeUndefined();
    expect((await fsp.readdir(folder)).filter((f) => f.endsWith('.avhdx'))).toEqual([]);
  });

  it('a label that is not the pending checkpoint\'s is refused and leaves the VM as it is', async () => {
    const vmId = await crashQuiesced('crash-other', 'pause');
    await expect(hv.createBackupCheckpoint(vmId, { mode: 'offline', offlineMethod: 'pause', label: 'backup/crash-other/2' })).rejects.toThrow(/release it first/);
    expect((await lab.getVm(vmId)).state).toBe('paused');
  });
});
