import { decideBackupMode, onlineBlockers, BackupModeRefused } from '../../protection/backup-mode';
import { pickOwner } from '../../workflows/locate';
import type { VmFacts } from '../../hypervisor/types';

function windowsVm(over: Partial<VmFacts> = {}): VmFacts {
  return {
    vmId: 'b1d5c3a2-0000-4000-8000-000000000001',
    name: 'sql01',
    host: 'hv01',
    state: 'running',
    guestOs: 'Windows Server 2019 Datacenter',
    guestOsFamily: 'windows',
    guestOsVersion: '10.0.17763',
    integrationServices: { backup: { enabled: true, responding: true } },
    volumes: [
      { name: 'C:', fileSystem: 'NTFS', dynamicDisk: false },
      { name: 'D:', fileSystem: 'NTFS', dynamicDisk: false },
    ],
    disks: [
      { diskId: 'scsi0-0', path: '/x.vhdx', basePath: '/x.vhdx', virtualSize: 1 << 30, storage: 'local', passthrough: false, controller: 'scsi' },
    ],
    replica: { role: 'none' },
    configPath: '/vms/sql01',
    config: {},
    checkpoints: [],
    ...over,
  };
}

test('a qualifying Windows guest is backed up online through VSS, with no reasons', () => {
  expect(decideBackupMode(windowsVm())).toEqual({ mode: 'online', quiesce: 'vss', reasons: [] });
});

test.each<[string, Partial<VmFacts>, RegExp]>([
  ['backup integration service off', { integrationServices: { backup: { enabled: false, responding: false } } }, /integration service is disabled/],
  ['integration service not responding', { integrationServices: { backup: { enabled: true, responding: false } } }, /not responding/],
  ['Linux guest', { guestOs: 'Ubuntu 22.04', guestOsFamily: 'linux', guestOsVersion: undefined }, /Ubuntu 22\.04.*no VSS/],
  ['Windows 2000', { guestOs: 'Windows 2000 Server', guestOsVersion: '5.0.2195' }, /older than Windows Server 2003/],
  ['dynamic disk', { volumes: [{ name: 'E:', fileSystem: 'NTFS', dynamicDisk: true }] }, /E: are on dynamic disks/],
  ['FAT32 volume', { volumes: [{ name: 'F:', fileSystem: 'FAT32', dynamicDisk: false }] }, /F: \(FAT32\) are not NTFS/],
  ['ReFS volume', { volumes: [{ name: 'R:', fileSystem: 'ReFS', dynamicDisk: false }] }, /not NTFS/],
  ['shadow storage redirected', { volumes: [{ name: 'C:', fileSystem: 'NTFS', dynamicDisk: false, shadowStorageOn: 'D:' }] }, /C: is on D:/],
  ['cluster group offline', { cluster: { name: 'clu1', groupState: 'partial', ownerNode: 'hv01', nodes: ['hv01', 'hv02'] } }, /clu1 is partial/],
])('%s forces offline with a reason', (_label, over, reason) => {
  const d = decideBackupMode(windowsVm(over));
  expect(d.mode).toBe('offline');
  expect(d.quiesce).toBe('save');
  expect(d.reasons.join('; ')).toMatch(reason);
});

test('every blocker is recorded, not just the first', () => {
  const facts = windowsVm({
    guestOsFamily: 'linux',
    guestOs: 'Debian 12',
    integrationServices: { backup: { enabled: false, responding: false } },
    volumes: [{ name: '/', fileSystem: 'ext4', dynamicDisk: false }],
  });
  expect(onlineBlockers(facts)).toHaveLength(3);
});

test('a shadow storage assignment to the volume itself is fine', () => {
  const d = decideBackupMode(windowsVm({ volumes: [{ name: 'C:', fileSystem: 'NTFS', dynamicDisk: false, shadowStorageOn: 'C:' }] }));
  expect(d.mode).toBe('online');
});

test('off, saved and paused VMs are offline without touching them', () => {
  for (const state of ['off', 'saved', 'paused'] as const) {
    const d = decideBackupMode(windowsVm({ state }));
    expect(d).toMatchObject({ mode: 'offline', quiesce: 'none' });
    expect(d.reasons.join()).toMatch(new RegExp(`VM is ${state}`));
  }
});

test('offline method follows the policy', () => {
  const linux = windowsVm({ guestOsFamily: 'linux', guestOs: 'Debian 12' });
  expect(decideBackupMode(linux, { offlineMethod: 'pause' }).quiesce).toBe('pause');
});

test('a policy that forbids offline fails instead of pausing the VM, with the reasons', () => {
  const linux = windowsVm({ guestOsFamily: 'linux', guestOs: 'Debian 12' });
  expect(() => decideBackupMode(linux, { allowOffline: false })).toThrow(BackupModeRefused);
  expect(() => decideBackupMode(linux, { allowOffline: false })).toThrow(/forbids offline backups.*--allow-offline/);
  // An off VM needs no pause, so the policy does not stand in the way.
  expect(decideBackupMode(windowsVm({ state: 'off' }), { allowOffline: false }).mode).toBe('offline');
});

test('a passthrough disk is refused naming guest-level protection', () => {
  const facts = windowsVm();
  facts.disks.push({ ...facts.disks[0], diskId: 'scsi0-1', passthrough: true });
  try {
    decideBackupMode(facts);
    throw new Error('expected a refusal');
  } catch (err) {
    expect(err).toBeInstanceOf(BackupModeRefused);
    expect((err as BackupModeRefused).type).toBe('PassthroughDiskNotSupported');
    expect((err as Error).message).toMatch(/scsi0-1.*guest-level protection/);
  }
});

test('a replica VM is read without pausing', () => {
  const d = decideBackupMode(windowsVm({ state: 'off', replica: { role: 'replica', primaryServer: 'hv01' } }));
  expect(d).toMatchObject({ mode: 'offline', quiesce: 'none' });
});

test('pickOwner prefers the copy the protection asks for', () => {
  const probes = [
    { host: 'hv01', present: true, role: 'primary' as const },
    { host: 'dr01', present: true, role: 'replica' as const },
    { host: 'hv02', present: false },
  ];
  expect(pickOwner(probes)?.host).toBe('hv01');
  expect(pickOwner(probes, 'replica')?.host).toBe('dr01');
  expect(pickOwner(probes.slice(1), 'primary')).toBeUndefined();
  expect(pickOwner([{ host: 'hv02', present: false }])).toBeUndefined();
});
