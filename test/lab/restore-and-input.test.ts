// Restore (importVm), every settable property, and hostile input.
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Lab, LabError, LabHypervisor, initialDiskContent } from '../../hypervisor/lab';
import { LabStateError } from '../../hypervisor/lab/state';
import { HypervisorError } from '../../hypervisor/types';
import { createDynamicVhdx, openVhdx } from '../../vhdx';
import { MiB, expectHvError, expectSameBytes, readAll, tempLab } from './helpers';

const SIZE = 2 * MiB;
const content = { kind: 'random' as const, seed: 77, fill: 0.5 };

describe('restore, properties and hostile input', () => {
  let lab: Lab;
  let root: string;
  let cleanup: () => Promise<void>;
  let hv1: LabHypervisor, hv2: LabHypervisor;
  beforeAll(async () => {
    ({ lab, root, cleanup } = await tempLab());
    await lab.createHost('hv1');
    await lab.createHost('hv2');
    hv1 = await LabHypervisor.open(lab, 'hv1');
    hv2 = await LabHypervisor.open(lab, 'hv2');
  });
  afterAll(() => cleanup());

  /** What a restore does: write a recovery point's bytes into a new VHDX. */
  async function restoredFile(name: string, data: Buffer): Promise<string> {
    const p = path.join(root, `${name}.vhdx`);
    await createDynamicVhdx(p, { virtualSize: data.length, blockSize: MiB });
    const d = await openVhdx(p, { writable: true });
    await d.write(0, data);
    await d.flush();
    await d.close();
    return p;
  }

  it('restores a VM to another host (off, boots) and to its original place', async () => {
    const vm = await lab.createVm({ name: 'db01', host: 'hv1', memoryMiB: 4096, disks: [{ sizeBytes: SIZE, blockSize: MiB, content }, { diskId: 'ide0-1', controller: 'ide', sizeBytes: MiB }] });
    const ck = await hv1.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    const facts = await hv1.inspectVm(vm.vmId);
    const images = new Map<string, Buffer>();
    for (const d of ck.disks) {
      const r = await hv1.openCheckpointDisk(vm.vmId, ck.checkpointId, d.diskId);
      images.set(d.diskId, await readAll(r));
      await r.close();
    }
    await hv1.releaseCheckpoint(vm.vmId, ck.checkpointId);

    // Another host, as a new VM.
    const disks = await Promise.all([...images].map(async ([diskId, data]) => ({ diskId, path: await restoredFile(`copy-${diskId}`, data) })));
    await expect(hv2.importVm({ config: facts.config, disks })).rejects.toThrow(/exists already/);
    const copy = await hv2.importVm({ config: facts.config, disks, vmId: 'db01-restored', name: 'db01 (restored)' });
    expect(copy).toMatchObject({ vmId: 'db01-restored', host: 'hv2', name: 'db01 (restored)', state: 'off', guestOs: facts.guestOs });
    // A retried activity (the reply was lost) gets the same VM back.
    expect(await hv2.importVm({ config: facts.config, disks, vmId: 'db01-restored', name: 'db01 (restored)' })).toEqual(copy);
    expect((copy.config as { memoryMiB: number }).memoryMiB).toBe(4096);
    expect(copy.disks.map((d) => [d.diskId, d.controller, d.virtualSize])).toEqual([['scsi0-0', 'scsi', SIZE], ['ide0-1', 'ide', MiB]]);
    await hv2.startVm(copy.vmId);
    expectSameBytes(await lab.readDisk(copy.vmId, 'scsi0-0', 0, SIZE), initialDiskContent(content, SIZE));

    // The original place: the VM must be off; its disks are replaced, change tracking starts anew.
    await lab.writeDisk(vm.vmId, 'scsi0-0', 0, Buffer.alloc(8192, 0xee));
    const back = await Promise.all([...images].map(async ([diskId, data]) => ({ diskId, path: await restoredFile(`back-${diskId}`, data) })));
    await expect(hv1.importVm({ config: facts.config, disks: back, replace: true })).rejects.toThrow(/must be off/);
    await lab.stopVm(vm.vmId);
    const orig = await hv1.importVm({ config: facts.config, disks: back, replace: true });
    expect(await hv1.importVm({ config: facts.config, disks: back, replace: true })).toEqual(orig);
    expect(orig.disks[0].path).toBe(facts.disks[0].basePath);
    expect(orig.disks[0].changeTrackingId).toBeUndefined();
    await hv1.startVm(vm.vmId);
    expectSameBytes(await lab.readDisk(vm.vmId, 'scsi0-0', 0, SIZE), initialDiskContent(content, SIZE));

    // And into a folder of its own choosing.
    const folder = path.join(root, 'elsewhere');
    const third = await Promise.all([...images].map(async ([diskId, data]) => ({ diskId, path: await restoredFile(`third-${diskId}`, data) })));
    const f3 = await hv2.importVm({ config: facts.config, disks: third, vmId: 'db01-folder', storage: { folder } });
    expect(path.dirname(f3.disks[0].path)).toBe(folder);
    expect(f3.configPath).toBe(folder);
  });

  it('refuses restores that do not fit the configuration, and VMs whose disks do not open', async () => {
    const vm = await lab.createVm({ name: 'bad-restore', host: 'hv1', disks: [{ sizeBytes: SIZE }] });
    const facts = await hv1.inspectVm(vm.vmId);
    const small = await restoredFile('small', Buffer.alloc(MiB));
    await expect(hv2.importVm({ config: facts.config, disks: [{ diskId: 'scsi0-0', path: small }], vmId: 'x1' })).rejects.toThrow(/is 1048576 bytes, the configuration says 2097152/);
    await expect(hv2.importVm({ config: facts.config, disks: [], vmId: 'x2' })).rejects.toThrow(/no restored file for disk scsi0-0/);
    await expect(hv2.importVm({ config: { ...facts.config, format: 'x' }, disks: [], vmId: 'x3' })).rejects.toThrow(LabError);
    await expect(hv2.importVm({ config: { ...facts.config, disks: [{ diskId: '../../etc', virtualSize: 1 }] }, disks: [] })).rejects.toThrow(/disk id/);
    await expect(hv2.importVm({ config: null, disks: [] })).rejects.toThrow(/not an object/);
    const junk = path.join(root, 'junk.vhdx');
    await fsp.writeFile(junk, 'not a vhdx');
    await expect(hv2.importVm({ config: facts.config, disks: [{ diskId: 'scsi0-0', path: junk }], vmId: 'x4' })).rejects.toThrow(/does not open/);

    await lab.stopVm(vm.vmId);
    await fsp.writeFile(facts.disks[0].path, 'corrupted');
    await expectHvError(hv1.startVm(vm.vmId), 'HypervisorCommandFailed', /cannot start: disk scsi0-0 .* does not open/);
  });

  it('sets every property a backup decision depends on', async () => {
    await lab.createCluster('c9', ['c9n1']);
    const vm = await lab.createVm({ name: 'props', host: 'c9n1', disks: [{ sizeBytes: MiB }] });
    const f0 = await lab.inspectVm(vm.vmId);
    expect(f0).toMatchObject({
      state: 'running',
      guestOsFamily: 'windows',
      guestOsVersion: '10.0.17763',
      integrationServices: { backup: { enabled: true, responding: true } },
      volumes: [{ name: 'C:', fileSystem: 'NTFS', dynamicDisk: false }],
      replica: { role: 'none' },
      checkpoints: [],
    });
    expect(f0.cluster).toBeUndefined();
    const f = await lab.setVmProperties('props', {
      state: 'saved',
      guestOs: 'Ubuntu 22.04',
      guestOsFamily: 'linux',
      guestOsVersion: null,
      integrationServices: { backup: { enabled: false }, heartbeat: { responding: false } },
      volumes: [
        { name: '/', fileSystem: 'ext4', dynamicDisk: false },
        { name: 'D:', fileSystem: 'NTFS', dynamicDisk: true, shadowStorageOn: 'E:' },
      ],
      clustered: { groupState: 'partial' },
      replica: { role: 'replica', primaryServer: 'hv1' },
      disks: { 'scsi0-0': { controller: 'ide', passthrough: true } },
    });
    expect(f).toMatchObject({
      state: 'saved',
      guestOs: 'Ubuntu 22.04',
      guestOsFamily: 'linux',
      integrationServices: { backup: { enabled: false, responding: true }, heartbeat: { enabled: true, responding: false } },
      volumes: [{ fileSystem: 'ext4' }, { dynamicDisk: true, shadowStorageOn: 'E:' }],
      cluster: { name: 'c9', groupState: 'partial', ownerNode: 'c9n1', nodes: ['c9n1'] },
      replica: { role: 'replica', primaryServer: 'hv1' },
      disks: [{ controller: 'ide', passthrough: true }],
    });
    expect(f.guestOsVersion).toBeUndefined();
    const hv = await LabHypervisor.open(lab, 'c9n1');
    await expectHvError(hv.createBackupCheckpoint(vm.vmId, { mode: 'online' }), 'HypervisorCommandFailed', /passthrough disk scsi0-0.*guest level/);
    await expect(lab.setVmProperties(vm.vmId, { state: 'exploded' as never })).rejects.toThrow(/bad VM state/);
    await expect(lab.setVmProperties(vm.vmId, { disks: { nope: { passthrough: false } } })).rejects.toThrow(/no disk "nope"/);
    await expect(lab.setVmProperties(vm.vmId, { replica: { role: 'tertiary' as never } })).rejects.toThrow(/bad replica role/);
    await expect(lab.setVmProperties(vm.vmId, { volumes: [{ name: 'C:' }] as never })).rejects.toThrow(/bad guest volume/);
    const nc = await lab.setVmProperties(vm.vmId, { clustered: false });
    expect(nc.cluster).toBeUndefined();
  });

  it('rolls a failed checkpoint back and resumes the VM it quieted', async () => {
    const vm = await lab.createVm({ name: 'half', host: 'hv1', disks: [{ sizeBytes: MiB }, { sizeBytes: MiB }] });
    await fsp.writeFile(vm.disks[1].path, 'no longer a vhdx');
    await expectHvError(hv1.createBackupCheckpoint(vm.vmId, { mode: 'offline', offlineMethod: 'save' }), 'HypervisorCommandFailed', /cannot create a backup checkpoint of VM half/);
    const f = await hv1.inspectVm(vm.vmId);
    expect(f.state).toBe('running');
    expect(f.checkpoints).toEqual([]);
    expect(f.disks[0].path).toBe(vm.disks[0].path);
    expect((await fsp.readdir(f.configPath)).filter((n) => n.endsWith('.avhdx'))).toEqual([]);
  });

  it('answers hostile input with clear errors', async () => {
    const vm = await lab.createVm({ name: 'target', host: 'hv1', disks: [{ sizeBytes: MiB }] });
    for (const bad of ['nope', '', '../../etc/passwd', 'x'.repeat(10_000), 42 as unknown as string, null as unknown as string, '__proto__', 'constructor']) {
      await expectHvError(hv1.inspectVm(bad), 'VmNotFound');
      expect(await hv1.isVmOnHost(bad)).toBe(false);
      await expectHvError(hv1.createBackupCheckpoint(bad, { mode: 'online' }), 'VmNotFound');
    }
    await expect(LabHypervisor.open(lab, 'nohost')).rejects.toThrow(/no lab host "nohost"/);
    await expect(LabHypervisor.open(lab, '__proto__')).rejects.toThrow(HypervisorError);
    await expect(lab.createVm({ name: 'x', host: '__proto__', disks: [] })).rejects.toThrow(/no lab host/);
    await expect(lab.createHost('constructor')).rejects.toThrow(/bad host name/);

    await expectHvError(hv1.createBackupCheckpoint(vm.vmId, { mode: 'sideways' as never }), 'HypervisorCommandFailed', /bad backup mode/);
    const ck = await hv1.createBackupCheckpoint(vm.vmId, { mode: 'online', label: 'a' });
    await expectHvError(hv1.createBackupCheckpoint(vm.vmId, { mode: 'online', label: 'b' }), 'HypervisorCommandFailed', /already has backup checkpoint/);
    for (const badCk of ['nope', '', ck.checkpointId.toUpperCase(), 7 as unknown as string]) {
      await expectHvError(hv1.openCheckpointDisk(vm.vmId, badCk, 'scsi0-0'), 'CheckpointNotFound');
      await expectHvError(hv1.changedRanges(vm.vmId, badCk, 'scsi0-0', 'rct:x:0'), 'CheckpointNotFound');
      await hv1.releaseCheckpoint(vm.vmId, badCk); // nothing to release: fine
    }
    await expectHvError(hv1.openCheckpointDisk(vm.vmId, ck.checkpointId, 'scsi9-9'), 'HypervisorCommandFailed', /no disk/);
    await expectHvError(hv1.changedRanges(vm.vmId, ck.checkpointId, '../x', 'rct:x:0'), 'HypervisorCommandFailed', /no disk/);
    const epoch = ck.disks[0].changeTrackingId.split(':')[1];
    for (const since of ['garbage', '', 'rct:not-a-uuid:0', `rct:${epoch}:999`, `rct:${epoch}:-1`, 'rct:00000000-0000-0000-0000-000000000000:0']) {
      const r = await hv1.changedRanges(vm.vmId, ck.checkpointId, 'scsi0-0', since);
      expect(r.tracked).toBe(false);
      expect(r.ranges).toEqual([]);
      expect(r.reason).toBeTruthy();
    }
    expect(await hv1.changedRanges(vm.vmId, ck.checkpointId, 'scsi0-0', ck.disks[0].changeTrackingId)).toEqual({ tracked: true, ranges: [] });
    await hv1.releaseCheckpoint(vm.vmId, ck.checkpointId);

    await expect(lab.createVm({ name: 'x', host: 'nohost', disks: [] })).rejects.toThrow(/no lab host/);
    await expect(lab.createVm({ name: 'x', host: 'hv1', vmId: '../escape', disks: [] })).rejects.toThrow(/bad VM id/);
    await expect(lab.createVm({ name: 'x', host: 'hv1', vmId: vm.vmId, disks: [] })).rejects.toThrow(/exists already/);
    await expect(lab.createVm({ name: 'x', host: 'hv1', disks: [{ sizeBytes: 1000 }] })).rejects.toThrow(/multiple of 512/);
    await expect(lab.createVm({ name: 'x', host: 'hv1', disks: [{ sizeBytes: 2 ** 60 }] })).rejects.toThrow(/up to 64 TiB/);
    await expect(lab.createVm({ name: 'x', host: 'hv1', disks: [{ sizeBytes: MiB, diskId: 'a' }, { sizeBytes: MiB, diskId: 'a' }] })).rejects.toThrow(/given twice/);
    await expect(lab.createVm({ name: 'x', host: 'hv1', storage: 'csv', disks: [] })).rejects.toThrow(/not a cluster node/);
    await expect(lab.createVm({ name: 'x', host: 'hv1', storage: { smb: { fileServer: '..', share: 'x' } }, disks: [] })).rejects.toThrow(/bad SMB/);
    await expect(lab.createVm({ name: 'x', host: 'hv1', storage: { folder: 'relative/path' }, disks: [] })).rejects.toThrow(/absolute/);
    await expect(lab.createHost('a/b')).rejects.toThrow(/bad host name/);
    await expect(lab.createCluster('c', ['hv1', '..'])).rejects.toThrow(/bad host name/);
    await expect(lab.migrateVm(vm.vmId, 'nohost')).rejects.toThrow(/no lab host/);
    await expectHvError(lab.writeDisk(vm.vmId, 'scsi0-0', MiB - 10, Buffer.alloc(20)), 'HypervisorCommandFailed', /outside disk/);

    // Two VMs of one name on one host: the name is ambiguous, the ids are not.
    const twin = await lab.createVm({ name: 'target', host: 'hv1', disks: [] });
    await expectHvError(hv1.inspectVm('target'), 'HypervisorCommandFailed', /ambiguous/);
    expect((await hv1.inspectVm(twin.vmId)).vmId).toBe(twin.vmId);

    const foreign = path.join(root, 'foreign');
    await fsp.mkdir(foreign);
    await fsp.writeFile(path.join(foreign, 'lab.json'), '{"format":"something-else"}');
    await expect(Lab.open(foreign)).rejects.toThrow(LabStateError);
    await fsp.writeFile(path.join(foreign, 'lab.json'), '{oops');
    await expect(Lab.open(foreign)).rejects.toThrow(/not valid JSON/);
  });
});
