// The Hyper-V adapter against a fake pwsh: the commands it sends and how it reads the answers.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HyperVHypervisor, PENDING_RCT_PREFIX, findPowerShell, psQuote } from '../../hypervisor/hyperv';
import { RctStore } from '../../hypervisor/hyperv/rct-store';
import { HypervisorError } from '../../hypervisor/types';
import { BackupModeRefused, decideBackupMode } from '../../protection/backup-mode';
import { createDynamicVhdx, openVhdx } from '../../vhdx';
import { CKPT, FAKE_PWSH, LINUX_VM, NASTY_NAME, WIN_VM, fakeHost } from './support';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

async function rejection(p: Promise<unknown>): Promise<HypervisorError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(HypervisorError);
    return e as HypervisorError;
  }
  throw new Error('expected a rejection');
}

describe('PowerShell quoting', () => {
  test('single-quoted literal doubles every kind of single quote', () => {
    expect(psQuote("it's")).toBe("'it''s'");
    expect(psQuote('a\u2019b')).toBe("'a\u2019\u2019b'");
    expect(psQuote('$x `y` "z"')).toBe(`'$x \`y\` "z"'`);
  });
});

describe('finding PowerShell', () => {
  test('pwsh on PATH is found (Linux order), powershell.exe first on Windows', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-ps-'));
    for (const n of ['pwsh', 'powershell.exe']) fs.writeFileSync(path.join(dir, n), '', { mode: 0o755 });
    expect(findPowerShell({ PATH: dir }, 'linux')).toBe(path.join(dir, 'pwsh'));
    fs.writeFileSync(path.join(dir, 'pwsh.exe'), '', { mode: 0o755 });
    expect(findPowerShell({ PATH: dir }, 'win32')).toBe(path.join(dir, 'powershell.exe'));
    expect(findPowerShell({ PATH: '/nonexistent-dir' }, 'linux')).toBeUndefined();
  });
});

describe('listVms', () => {
  test('runs Get-VM through the pwsh on PATH; States as names or numbers', async () => {
    const f = fakeHost([{ op: 'list', fixture: 'list.json', expectCmdlets: ['Get-VM', 'ConvertTo-Json', 'Get-Cluster'], banner: true }]);
    const vms = await f.adapter.listVms();
    expect(vms.map((v) => [v.name, v.state, v.cluster])).toEqual([
      ['SQL01', 'running', undefined],
      ['FS-CLU', 'running', 'HVCLU1'],
      ['WEB01-replica', 'off', undefined],
      ['build-linux', 'saved', undefined],
      ['Paused VM', 'paused', undefined],
    ]);
    expect(vms[0].vmId).toBe(WIN_VM);
    expect(vms[0].host).toBe('HV01');
    expect(f.remaining()).toBe(0);
  });

  test('one VM comes back as an object, not an array', async () => {
    const f = fakeHost([{ op: 'list', fixture: 'list-single.json' }]);
    expect(await f.adapter.listVms()).toEqual([{ vmId: WIN_VM, name: 'SQL01', host: 'HV01', state: 'running' }]);
  });

  test('the configured executable is used instead of PATH', async () => {
    const f = fakeHost([{ op: 'list', fixture: 'list-single.json' }]);
    // PATH holds node (the fake is a node script) but no pwsh.
    const a = new HyperVHypervisor({ env: { ...f.env, PATH: path.dirname(process.execPath) }, powershell: FAKE_PWSH, stateDir: f.dir });
    expect(await a.listVms()).toHaveLength(1);
  });
});

describe('inspectVm', () => {
  test('a Windows VM that qualifies for online backup', async () => {
    const f = fakeHost([
      {
        op: 'inspect',
        fixture: 'inspect-windows.json',
        expectParams: { vm: 'SQL01' },
        expectCmdlets: [
          'Get-VMIntegrationService',
          'Get-VMHardDiskDrive',
          'Get-VHD -LiteralPath',
          'Msvm_KvpExchangeComponent',
          'GuestIntrinsicExchangeItems',
          'Get-VMReplication',
          'Get-ClusterGroup',
          'Get-VMSnapshot',
          'Msvm_VirtualSystemReferencePoint',
          'ConvertTo-Json',
        ],
      },
    ]);
    const facts = await f.adapter.inspectVm('SQL01');
    expect(facts).toMatchObject({
      vmId: WIN_VM,
      name: 'SQL01',
      host: 'HV01',
      state: 'running',
      guestOs: 'Windows Server 2019 Datacenter',
      guestOsFamily: 'windows',
      guestOsVersion: '10.0.17763',
      integrationServices: { backup: { enabled: true, responding: true }, heartbeat: { enabled: true, responding: true } },
      replica: { role: 'none' },
      configPath: 'D:\\Hyper-V\\SQL01',
    });
    expect(facts.cluster).toBeUndefined();
    expect(facts.disks).toEqual([
      {
        diskId: 'scsi0-0',
        path: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01_8C2D1E7A-77B4-4D5C-9E0A-6B4F3C2D1E0F.avhdx',
        basePath: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01.vhdx',
        virtualSize: 136365211648,
        storage: 'local',
        passthrough: false,
        controller: 'scsi',
      },
      {
        diskId: 'scsi0-1',
        path: 'C:\\ClusterStorage\\Volume1\\SQL01\\SQL01-data.vhdx',
        basePath: 'C:\\ClusterStorage\\Volume1\\SQL01\\SQL01-data.vhdx',
        virtualSize: 53687091200,
        storage: 'csv',
        passthrough: false,
        controller: 'scsi',
      },
    ]);
    // Guest volumes are inside the guest: unknown, not invented, and no reason to go offline.
    expect(facts.volumes).toEqual([]);
    expect(facts.unknownGuestFacts).toEqual([expect.stringMatching(/^guest volumes: /)]);
    expect(facts.checkpointConsistency).toBe('production');
    expect(facts.unsupported).toBeUndefined();
    expect(decideBackupMode(facts)).toEqual({ mode: 'online', quiesce: 'vss', reasons: [] });
    // The integration services were found by their class ids, whatever the host's language calls them.
    expect(f.calls()[0].script).toContain('@{ Id = [string]$_.Id; Name = [string]$_.Name;');
    expect(facts.checkpoints).toEqual([
      { checkpointId: '44c5a1d2-3b4c-4d5e-8f6a-7b8c9d0e1f2a', createdAt: '2026-11-20T08:00:00.000Z', kind: 'standard' },
      { checkpointId: CKPT, createdAt: '2026-11-24T02:00:03.123Z', kind: 'backup', label: 'backup/sql01/2026-11-24T02:00:00Z' },
    ]);
    expect(JSON.parse(JSON.stringify(facts))).toEqual(facts); // plain data for Temporal
  });

  test('RCT ids come from the newest reference point this adapter made, only while it exists', async () => {
    const f = fakeHost([{ op: 'inspect', fixture: 'inspect-windows.json' }, { op: 'inspect', fixture: 'inspect-windows.json' }]);
    const store = new RctStore(path.join(f.dir, 'rct'));
    await store.put(WIN_VM, {
      checkpointId: CKPT,
      referencePointId: 'Microsoft:6F1C2A3B-0D4E-4F5A-8B9C-0123456789AB:RP-1',
      releasedAt: '2026-11-24T02:10:00Z',
      disks: { 'scsi0-0': 'rct-disk0', 'scsi0-1': 'rct-disk1' },
    });
    let facts = await f.adapter.inspectVm(WIN_VM);
    expect(facts.disks.map((d) => d.changeTrackingId)).toEqual(['rct-disk0', 'rct-disk1']);
    await store.put(WIN_VM, { checkpointId: '11111111-2222-4333-8444-555555555555', referencePointId: 'gone', releasedAt: '', disks: { 'scsi0-0': 'x' } });
    facts = await f.adapter.inspectVm(WIN_VM);
    expect(facts.disks.map((d) => d.changeTrackingId)).toEqual([undefined, undefined]);
  });

  test('a Linux VM (numeric enums, single objects, {value,Count} arrays)', async () => {
    const f = fakeHost([{ op: 'inspect', fixture: 'inspect-linux.json' }]);
    const facts = await f.adapter.inspectVm(LINUX_VM);
    expect(facts).toMatchObject({
      state: 'running',
      guestOs: 'Ubuntu 22.04.4 LTS',
      guestOsFamily: 'linux',
      integrationServices: { backup: { enabled: true, responding: true } },
      replica: { role: 'none' },
    });
    expect(facts.guestOsVersion).toBeUndefined();
    expect(facts.disks).toEqual([
      {
        diskId: 'scsi0-0',
        path: 'D:\\Hyper-V\\build-linux\\build-linux.vhdx',
        basePath: 'D:\\Hyper-V\\build-linux\\build-linux.vhdx',
        virtualSize: 68719476736,
        storage: 'local',
        passthrough: false,
        controller: 'scsi',
      },
    ]);
    expect(facts.volumes).toEqual([]);
    // Hyper-V 2016+ takes a production checkpoint of a Linux guest (a file-system freeze): online.
    expect(decideBackupMode(facts).mode).toBe('online');
  });

  test('a clustered VM on CSV with a disk on an SMB share', async () => {
    const f = fakeHost([{ op: 'inspect', fixture: 'inspect-clustered.json' }]);
    const facts = await f.adapter.inspectVm('FS-CLU');
    expect(facts.cluster).toEqual({ name: 'HVCLU1', groupState: 'partial', ownerNode: 'HV01', nodes: ['HV01', 'HV02', 'HV03'] });
    expect(facts.disks.map((d) => [d.diskId, d.storage, d.fileServer])).toEqual([
      ['scsi0-0', 'csv', undefined],
      ['scsi1-3', 'smb', 'fs01.corp.example'],
    ]);
    expect(facts.guestOsVersion).toBe('10.0.20348');
  });

  test('a Hyper-V Replica secondary', async () => {
    const f = fakeHost([{ op: 'inspect', fixture: 'inspect-replica.json' }]);
    const facts = await f.adapter.inspectVm('WEB01');
    expect(facts.replica).toEqual({ role: 'replica', primaryServer: 'HV01.corp.example', replicaServer: 'HVDR1.corp.example' });
    expect(facts.state).toBe('off');
    expect(facts.host).toBe('HV01'); // the agent's name for the host, not Get-VM's ComputerName
    // Off: no KVP data, so the guest is unknown, and the VSS service does not respond.
    expect(facts.guestOs).toBe('unknown');
    expect(facts.guestOsFamily).toBe('other');
    expect(facts.integrationServices.backup).toEqual({ enabled: true, responding: false });
    // No production-checkpoint promise (application-consistent where the guest can): a replica's guest never runs.
    expect(facts.checkpointConsistency).toBeUndefined();
  });

  test('a passthrough disk (DiskNumber set) is flagged and gets no volume', async () => {
    const f = fakeHost([{ op: 'inspect', fixture: 'inspect-passthrough.json' }]);
    const facts = await f.adapter.inspectVm('LEGACY-DB');
    expect(facts.disks.map((d) => [d.diskId, d.controller, d.passthrough, d.virtualSize])).toEqual([
      ['ide0-0', 'ide', false, 42949672960],
      ['scsi0-1', 'scsi', true, 0],
    ]);
    expect(facts.volumes).toEqual([]);
    // This legacy VM (configuration 5.0) is named for that too.
    expect(facts.unsupported).toEqual([
      { what: expect.stringContaining('configuration version 5.0'), remedy: expect.stringContaining('Update-VMVersion') },
      { diskId: 'scsi0-1', what: expect.stringContaining('passthrough'), remedy: expect.stringContaining('guest-level protection') },
    ]);
    expect(() => decideBackupMode({ ...facts, unsupported: facts.unsupported!.slice(1) })).toThrow(expect.objectContaining({ type: 'PassthroughDiskNotSupported' }));
  });

  test('a VHD disk and a configuration version without RCT are named at inspect with what to do', async () => {
    const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'inspect-windows.json'), 'utf8'));
    fixture.vm.Version = '5.0';
    fixture.disks[1].Path = 'E:\\old[1]\\data.vhd';
    fixture.disks[1].Chain = [{ Path: 'E:\\old[1]\\data.vhd', VhdType: 'Dynamic', VhdFormat: 'VHD', Size: 1073741824, ParentPath: '' }];
    const f = fakeHost([{ op: 'inspect', result: fixture, expectCmdlets: ['Get-VHD -LiteralPath $path'] }]);
    const facts = await f.adapter.inspectVm(WIN_VM);
    expect(facts.unsupported).toEqual([
      { what: expect.stringContaining('configuration version 5.0 has no resilient change tracking'), remedy: expect.stringContaining('Update-VMVersion') },
      { diskId: 'scsi0-1', what: expect.stringContaining('is a VHD file'), remedy: expect.stringContaining("-DestinationPath 'E:\\old[1]\\data.vhdx'") },
    ]);
    let refused: unknown;
    try {
      decideBackupMode(facts);
    } catch (e) {
      refused = e;
    }
    expect(refused).toBeInstanceOf(BackupModeRefused);
    expect((refused as BackupModeRefused).type).toBe('HostLevelBackupNotSupported');
    expect((refused as BackupModeRefused).message).toMatch(/Convert-VHD/);
  });

  test('guest volumes supplied by the caller replace the approximation', async () => {
    const f = fakeHost([{ op: 'inspect', fixture: 'inspect-linux.json' }], {
      guestVolumes: (facts) => (facts.name === 'build-linux' ? [{ name: '/', fileSystem: 'ext4', dynamicDisk: false }] : undefined),
    });
    expect((await f.adapter.inspectVm(LINUX_VM)).volumes).toEqual([{ name: '/', fileSystem: 'ext4', dynamicDisk: false }]);
  });

  test('a VM name with quotes, $, backticks and semicolons is data, never code', async () => {
    const f = fakeHost([{ op: 'inspect', fixture: 'inspect-windows.json', expectParams: { vm: NASTY_NAME } }]);
    await f.adapter.inspectVm(NASTY_NAME);
    const [call] = f.calls();
    expect(call.mismatch).toBeUndefined();
    expect(call.params.vm).toBe(NASTY_NAME);
    // Not in the script in any form: only base64 JSON carries it.
    for (const piece of [NASTY_NAME, "Evil'", 'Stop-VM -Name *', 'Remove-Item C:', '$env:X']) expect(call.script).not.toContain(piece);
    // The name is compared, not used as a Get-VM -Name wildcard pattern.
    expect(call.script).toContain('$_.Name -eq $ref');
    const code = call.script.split('\n').filter((l) => !l.trim().startsWith('#'));
    expect(code.filter((l) => l.includes('Get-VM -Name'))).toEqual([]);
  });
});

describe('VM not on this host', () => {
  test('VmNotOnHost names the owner node; VmNotFound when nobody has it', async () => {
    const f = fakeHost([
      { op: 'inspect', error: { type: 'VmNotOnHost', message: 'the VM is not on this host; its cluster group is owned by HV02', step: 'Get-ClusterResource', host: 'HV02', vmId: WIN_VM } },
      { op: 'create-checkpoint', error: { type: 'VmNotFound', message: 'no such VM on this host', cmdlet: 'Get-VM', step: 'Get-VM' } },
      { op: 'locate', result: { onHost: false, ownerNode: 'HV02', vmId: WIN_VM } },
      { op: 'locate', result: { onHost: true, vmId: WIN_VM } },
    ]);
    const e1 = await rejection(f.adapter.inspectVm('SQL01'));
    expect(e1.type).toBe('VmNotOnHost');
    expect(e1.details.host).toBe('HV02');
    const e2 = await rejection(f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online' }));
    expect(e2.type).toBe('VmNotFound');
    expect(e2.message).toContain('Get-VM');
    expect(await f.adapter.isVmOnHost('SQL01')).toBe(false);
    expect(await f.adapter.isVmOnHost(WIN_VM)).toBe(true);
  });
});

describe('backup checkpoints', () => {
  test('online: an application-consistent recovery checkpoint (SnapshotType 32768) through WMI', async () => {
    const f = fakeHost([
      {
        op: 'create-checkpoint',
        fixture: 'create-checkpoint-online.json',
        expectParams: { vm: WIN_VM, mode: 'online', consistencyLevel: 1, offlineMethod: 'none', label: 'backup/sql01/1' },
        expectCmdlets: [
          'Msvm_VirtualSystemSnapshotService',
          'Msvm_VirtualSystemSnapshotSettingData',
          'New-CimInstance -ClientOnly',
          'IgnoreNonSnapshottableDisks = $true',
          'CimSerializer',
          '-MethodName CreateSnapshot',
          'SnapshotType = [uint16]32768',
          'JobState -in 2, 3, 4, 5, 6',
          'Rename-VMSnapshot',
          'Get-VMHardDiskDrive -VMSnapshot',
        ],
      },
    ]);
    const ckpt = await f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online', label: 'backup/sql01/1' });
    expect(ckpt).toEqual({
      checkpointId: CKPT,
      vmId: WIN_VM,
      host: 'HV01',
      mode: 'online',
      createdAt: new Date(1795485603123).toISOString(),
      disks: [
        // Read from the frozen file itself (GetVirtualDiskInformation); the second file could not say.
        { diskId: 'scsi0-0', frozenPath: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01.vhdx', virtualSize: 136365211648, changeTrackingId: 'rctX:c4f2a1b0:8d3e:4f51:a6b2:9c0d1e2f3a4b:00000002' },
        { diskId: 'scsi0-1', frozenPath: 'C:\\ClusterStorage\\Volume1\\SQL01\\SQL01-data.vhdx', virtualSize: 53687091200, changeTrackingId: `${PENDING_RCT_PREFIX}${CKPT}` },
      ],
    });
    expect(ckpt.downtimeMs).toBeUndefined();
  });

  test('offline (save): Save-VM → CreateSnapshot → Start-VM at once, downtime from the trace', async () => {
    const f = fakeHost([
      {
        op: 'create-checkpoint',
        fixture: 'create-checkpoint-offline.json',
        expectParams: { vm: LINUX_VM, mode: 'offline', consistencyLevel: 2, offlineMethod: 'save', heldQuiet: '', recordCheckpointId: '' },
        record: { quiesced: 'save', checkpointId: '5d6e7f80-9a1b-4c2d-8e3f-4a5b6c7d8e9f' },
      },
    ]);
    const ckpt = await f.adapter.createBackupCheckpoint(LINUX_VM, { mode: 'offline', offlineMethod: 'save', label: 'b/2' });
    // Done and resumed: the record holds no pause any more, only the checkpoint (for retries and release).
    expect(JSON.parse(fs.readFileSync(path.join(f.dir, 'rct', `${LINUX_VM}.checkpoint.json`), 'utf8'))).toMatchObject({ quiesced: null, checkpointId: '5d6e7f80-9a1b-4c2d-8e3f-4a5b6c7d8e9f' });
    expect(ckpt.mode).toBe('offline');
    expect(ckpt.downtimeMs).toBe(6500);
    expect(ckpt.checkpointId).toBe('5d6e7f80-9a1b-4c2d-8e3f-4a5b6c7d8e9f');
    expect(ckpt.disks).toHaveLength(1);
    // The order inside the one script: record, quiesce, snapshot, then resume after the catch.
    const { script } = f.calls()[0];
    const record = script.indexOf("Write-HvpRecord ([string]$p.offlineMethod) ''");
    const save = script.indexOf('Save-VM -VM $vm');
    const create = script.indexOf('-MethodName CreateSnapshot');
    const fin = script.indexOf('$primary = $_', create);
    expect(record).toBeGreaterThan(0);
    expect(save).toBeGreaterThan(record);
    const start = script.indexOf('Start-VM -VM $vm', fin);
    const resume = script.indexOf('Resume-VM -VM $vm', fin);
    expect(save).toBeGreaterThan(0);
    expect(create).toBeGreaterThan(save);
    expect(fin).toBeGreaterThan(create);
    expect(start).toBeGreaterThan(fin);
    expect(resume).toBeGreaterThan(fin);
    expect(script.indexOf('Suspend-VM -VM $vm')).toBeLessThan(create);
  });

  test('offline failure after the pause: the VM our record holds is resumed before the error is reported', async () => {
    const f = fakeHost([
      {
        op: 'create-checkpoint',
        record: { quiesced: 'pause', checkpointId: null },
        error: {
          type: 'HypervisorCommandFailed',
          message: 'CreateSnapshot: job ended in state 10: The operation failed.',
          cmdlet: 'Invoke-CimMethod',
          method: 'CreateSnapshot',
          step: 'CreateSnapshot',
          trace: [{ step: 'Suspend-VM', at: '2026-11-24T03:00:00Z' }, { step: 'quiesced', at: '2026-11-24T03:00:00.1Z' }, { step: 'CreateSnapshot', at: '2026-11-24T03:00:00.2Z' }],
        },
      },
      { op: 'power', expectParams: { vm: LINUX_VM, action: 'resume-held', held: 'pause' }, result: { before: 'Paused', after: 'Running' } },
    ]);
    const e = await rejection(f.adapter.createBackupCheckpoint(LINUX_VM, { mode: 'offline', offlineMethod: 'pause' }));
    expect(e.type).toBe('HypervisorCommandFailed');
    expect(e.message).toContain('Invoke-CimMethod');
    expect(e.details.resumedAfterFailure).toBe(true);
    expect(f.calls().map((c) => c.op)).toEqual(['create-checkpoint', 'power']);
    expect(fs.existsSync(path.join(f.dir, 'rct', `${LINUX_VM}.checkpoint.json`))).toBe(false);
  });

  test('a failure that quieted nothing (the VM was already paused by someone else) resumes nothing', async () => {
    const f = fakeHost([
      {
        op: 'create-checkpoint',
        error: { type: 'HypervisorCommandFailed', message: 'CreateSnapshot returned 32775', cmdlet: 'Invoke-CimMethod', returnValue: 32775, trace: [{ step: 'CreateSnapshot', at: '2026-11-24T03:00:00Z' }] },
      },
    ]);
    const e = await rejection(f.adapter.createBackupCheckpoint(LINUX_VM, { mode: 'offline', offlineMethod: 'pause' }));
    expect(e.details.resumedAfterFailure).toBeUndefined();
    expect(f.calls().map((c) => c.op)).toEqual(['create-checkpoint']);
  });

  test('release resumes only a VM our record holds: heldQuiet comes from the record, and the record goes', async () => {
    const rec = path.join('rct', `${WIN_VM}.checkpoint.json`);
    const f = fakeHost([
      { op: 'release-checkpoint', fixture: 'release.json', expectParams: { vm: WIN_VM, checkpointId: CKPT, heldQuiet: '' } },
      { op: 'release-checkpoint', fixture: 'release.json', expectParams: { vm: WIN_VM, checkpointId: CKPT, heldQuiet: 'save' } },
    ]);
    // No record: an administrator's paused or saved VM is not ours to resume.
    await f.adapter.releaseCheckpoint(WIN_VM, CKPT);
    fs.writeFileSync(path.join(f.dir, rec), JSON.stringify({ version: 1, label: 'backup/sql01/1', quiesced: 'save', checkpointId: CKPT, at: '2026-11-24T03:00:00Z' }));
    await f.adapter.releaseCheckpoint(WIN_VM, CKPT);
    expect(fs.existsSync(path.join(f.dir, rec))).toBe(false);
    expect(f.remaining()).toBe(0);
  });

  test('release checks the RCT ids read from the frozen files against the reference point and warns when they differ', async () => {
    const f = fakeHost([
      { op: 'create-checkpoint', fixture: 'create-checkpoint-online.json' },
      { op: 'release-checkpoint', fixture: 'release.json' },
      { op: 'create-checkpoint', fixture: 'create-checkpoint-online.json' },
      { op: 'release-checkpoint', result: { ...JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'release.json'), 'utf8')), referencePoint: { ...JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'release.json'), 'utf8')).referencePoint, ResilientChangeTrackingIdentifiers: ['rctX:other:1', 'rctX:d5a3b2c1:9e4f:4a62:b7c3:0d1e2f3a4b5c:00000002'] } } },
    ]);
    await f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online', label: 'backup/sql01/5' });
    expect((await f.adapter.releaseToReferencePoint(WIN_VM, CKPT)).warning).toBeUndefined();
    await f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online', label: 'backup/sql01/6' });
    const second = await f.adapter.releaseToReferencePoint(WIN_VM, CKPT);
    expect(second.warning).toMatch(/differ from the reference point's for scsi0-0 \(read rctX:c4f2a1b0:.*, reference point rctX:other:1\)/);
    expect(fs.existsSync(path.join(f.dir, 'rct', `${WIN_VM}.checkpoint.json`))).toBe(false);
  });

  test('a retry by label after a crash before the rename finds the checkpoint by the id in the record and resumes the held VM', async () => {
    const f = fakeHost([
      {
        op: 'create-checkpoint',
        expectParams: { vm: WIN_VM, label: 'backup/sql01/1', heldQuiet: 'pause', recordCheckpointId: CKPT },
        expectCmdlets: ['Rename-VMSnapshot -VMSnapshot $existing -NewName ([string]$p.label)'],
        result: { ...JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'create-checkpoint-online.json'), 'utf8')), reused: true, resumed: 'Resume-VM', trace: [] },
      },
    ]);
    fs.mkdirSync(path.join(f.dir, 'rct'), { recursive: true });
    fs.writeFileSync(path.join(f.dir, 'rct', `${WIN_VM}.checkpoint.json`), JSON.stringify({ version: 1, label: 'backup/sql01/1', quiesced: 'pause', checkpointId: CKPT.toUpperCase(), at: 'x' }));
    const ckpt = await f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'offline', offlineMethod: 'pause', label: 'backup/sql01/1' });
    expect(ckpt.checkpointId).toBe(CKPT);
  });

  test('release by label after a crash between the pause and CreateSnapshot resumes the held VM (no checkpoint to release)', async () => {
    const f = fakeHost([
      { op: 'checkpoints-by-label', expectParams: { vm: LINUX_VM, label: 'backup/b/7' }, result: { vmId: LINUX_VM, checkpointIds: [] } },
      { op: 'power', expectParams: { vm: LINUX_VM, action: 'resume-held', held: 'pause' }, result: { before: 'Paused', after: 'Running' } },
    ]);
    fs.mkdirSync(path.join(f.dir, 'rct'), { recursive: true });
    fs.writeFileSync(path.join(f.dir, 'rct', `${LINUX_VM}.checkpoint.json`), JSON.stringify({ version: 1, label: 'backup/b/7', quiesced: 'pause', checkpointId: null, at: 'x' }));
    expect(await f.adapter.releaseCheckpointsByLabel(LINUX_VM, 'backup/b/7')).toEqual([]);
    expect(f.remaining()).toBe(0);
    expect(fs.existsSync(path.join(f.dir, 'rct', `${LINUX_VM}.checkpoint.json`))).toBe(false);
  });

  test('a label that cannot be set removes the new checkpoint and fails (no unnamed recovery checkpoint is left)', async () => {
    const f = fakeHost([
      {
        op: 'create-checkpoint',
        expectCmdlets: ['-MethodName DestroySnapshot -Arguments @{ AffectedSnapshot = $snap }'],
        error: { type: 'HypervisorCommandFailed', message: 'the recovery checkpoint could not be named backup/x/1 and was removed: Access denied', cmdlet: 'Rename-VMSnapshot', labelError: 'Access denied', checkpointRemoved: true },
      },
    ]);
    const e = await rejection(f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online', label: 'backup/x/1' }));
    expect(e.message).toContain('could not be named');
    expect(e.details.checkpointRemoved).toBe(true);
  });

  test('a guest that cannot quiesce: crash-consistent on the running VM, and the checkpoint says so and why', async () => {
    const online = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'create-checkpoint-online.json'), 'utf8'));
    const f = fakeHost([
      {
        op: 'create-checkpoint',
        expectParams: { consistencyLevel: 1, guestBackupType: 2 },
        error: { type: 'HypervisorCommandFailed', message: "CreateSnapshot: job ended in state 10: 'SQL01' could not initiate a checkpoint operation: the VSS writer SqlServerWriter failed", method: 'CreateSnapshot', jobState: 10, errorCode: 32768, step: 'CreateSnapshot' },
      },
      { op: 'create-checkpoint', expectParams: { consistencyLevel: 2, offlineMethod: 'none', label: 'backup/sql01/3' }, result: { ...online, consistencyLevel: 2 } },
    ]);
    const ckpt = await f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online', label: 'backup/sql01/3' });
    expect(ckpt.consistency).toEqual({ achieved: 'crash-consistent', reason: expect.stringContaining('SqlServerWriter failed') });
    expect(ckpt.downtimeMs).toBeUndefined();
  });

  test('no fallback when the policy says fail, or when the failure was not the guest', async () => {
    const guest = { op: 'create-checkpoint', error: { type: 'HypervisorCommandFailed', message: 'job ended in state 10', method: 'CreateSnapshot', jobState: 10 } };
    const f = fakeHost([guest], { applicationConsistentFallback: 'fail', guestBackupType: 'full' });
    expect((await rejection(f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online' }))).message).toContain('state 10');
    expect(f.calls()[0].params.guestBackupType).toBe(1);
    const g = fakeHost([{ op: 'create-checkpoint', error: { type: 'HypervisorCommandFailed', message: 'CreateSnapshot returned 32775', method: 'CreateSnapshot', returnValue: 32775 } }]);
    await rejection(g.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online' }));
    expect(g.calls()).toHaveLength(1);
  });

  test('a Hyper-V Replica secondary: crash-consistent recovery checkpoint of what replication applied, said so; its release resumes nothing', async () => {
    const REPLICA = '2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e';
    for (const shape of ['7', '5.1'] as const) {
      const f = fakeHost(
        [
          { op: 'create-checkpoint', fixture: 'create-checkpoint-replica.json', expectParams: { vm: REPLICA, mode: 'online' }, expectCmdlets: ['Get-HvpReplicaState $vm', '-SnapshotType AppConsistentReplica'] },
          { op: 'release-checkpoint', fixture: 'release-replica.json', expectParams: { heldQuiet: '' } },
        ],
        {},
        { vm: { state: 'Off' }, shape },
      );
      // Online asked, as for any VM: the replica has no running guest, so no application-consistent try and no fallback.
      const c = await f.adapter.createBackupCheckpoint(REPLICA, { mode: 'online', label: 'backup/web01-replica/1' });
      expect(c.consistency?.achieved).toBe('crash-consistent');
      expect(c.consistency?.reason).toMatch(/^a Hyper-V Replica secondary of HV01\.corp\.example, read on the replica server without pausing or starting it: the replicated data as of 2026-11-24T03:05:00\.000Z \(replication Replicating, health Normal\); newest recovery point WEB01 - Standard Replica .* \(Replica, 2026-11-24T03:00:00\.000Z\)$/);
      expect(c.disks).toEqual([{ diskId: 'scsi0-0', frozenPath: 'E:\\Replica\\WEB01\\WEB01.vhdx', virtualSize: 64424509440, changeTrackingId: 'rctX:7d8e9f0a:1b2c:4d3e:8f4a:5b6c7d8e9f0a:00000005' }]);
      const released = await f.adapter.releaseToReferencePoint(REPLICA, c.checkpointId);
      expect(released.resumed).toBeUndefined();
      expect(released.disks).toEqual([{ diskId: 'scsi0-0', changeTrackingId: 'rctX:7d8e9f0a:1b2c:4d3e:8f4a:5b6c7d8e9f0a:00000005' }]);
      expect(f.calls().filter((x) => x.mismatch)).toEqual([]);
      expect(f.remaining()).toBe(0);
    }
  });

  test('GuestBackupType is set only where the host knows it (Windows Server 2016 1703 and later)', async () => {
    const f = fakeHost([{ op: 'create-checkpoint', fixture: 'create-checkpoint-online.json', expectCmdlets: ["-contains 'GuestBackupType'", '$props.GuestBackupType = [byte]$p.guestBackupType'] }]);
    await f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online' });
  });

  test('a retried request with the same label gets the same checkpoint back', async () => {
    const f = fakeHost([{ op: 'create-checkpoint', result: { ...JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'create-checkpoint-online.json'), 'utf8')), reused: true, trace: [] } }]);
    const ckpt = await f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online', label: 'backup/sql01/1' });
    expect(ckpt.checkpointId).toBe(CKPT);
    expect(f.calls()[0].script).toContain("[string]$_.Name -eq [string]$p.label");
  });

  test('release converts to a reference point, records its RCT ids, and is idempotent', async () => {
    const f = fakeHost([
      {
        op: 'release-checkpoint',
        fixture: 'release.json',
        expectParams: { vm: WIN_VM, checkpointId: CKPT },
        expectCmdlets: ['-MethodName ConvertToReferencePoint', 'AffectedSnapshot = $snap', 'Microsoft:Hyper-V:Snapshot:Recovery', 'Msvm_VirtualSystemReferencePoint'],
      },
      { op: 'release-checkpoint', result: { vmId: WIN_VM, alreadyReleased: true, state: 'Running' } },
    ]);
    const first = await f.adapter.releaseToReferencePoint(WIN_VM, CKPT.toUpperCase());
    expect(first).toEqual({
      alreadyReleased: false,
      referencePointId: 'Microsoft:6F1C2A3B-0D4E-4F5A-8B9C-0123456789AB:RP-2',
      disks: [
        { diskId: 'scsi0-0', changeTrackingId: 'rctX:c4f2a1b0:8d3e:4f51:a6b2:9c0d1e2f3a4b:00000002' },
        { diskId: 'scsi0-1', changeTrackingId: 'rctX:d5a3b2c1:9e4f:4a62:b7c3:0d1e2f3a4b5c:00000002' },
      ],
    });
    // Again: the checkpoint is gone; success, with the ids remembered from the first time.
    await expect(f.adapter.releaseCheckpoint(WIN_VM, CKPT)).resolves.toBeUndefined();
    expect(f.remaining()).toBe(0);
    const entry = await new RctStore(path.join(f.dir, 'rct')).get(WIN_VM, CKPT);
    expect(entry?.disks['scsi0-1']).toBe('rctX:d5a3b2c1:9e4f:4a62:b7c3:0d1e2f3a4b5c:00000002');
  });

  test('older reference points of ours are destroyed (DestroyReferencePoint) past the kept count', async () => {
    const second = '7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d';
    const release = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'release.json'), 'utf8'));
    const f = fakeHost(
      [
        { op: 'release-checkpoint', result: { ...release, referencePoint: { ...release.referencePoint, InstanceID: 'RP-A' } } },
        { op: 'release-checkpoint', result: { ...release, referencePoint: { ...release.referencePoint, InstanceID: 'RP-B' } } },
        {
          op: 'destroy-reference-point',
          expectParams: { vm: WIN_VM, referencePointId: 'RP-A' },
          expectCmdlets: ['Msvm_VirtualSystemReferencePointService', '-MethodName DestroyReferencePoint', 'AffectedReferencePoint = $rp'],
          result: { alreadyGone: false },
        },
      ],
      { referencePointsKept: 1 },
    );
    await f.adapter.releaseCheckpoint(WIN_VM, CKPT);
    await f.adapter.releaseCheckpoint(WIN_VM, second);
    expect(f.calls().map((c) => c.op)).toEqual(['release-checkpoint', 'release-checkpoint', 'destroy-reference-point']);
    expect(f.remaining()).toBe(0);
  });

  test('an id that is not a GUID cannot be a Hyper-V checkpoint', async () => {
    const f = fakeHost([]);
    expect((await rejection(f.adapter.releaseCheckpoint(WIN_VM, "x'; Remove-VM"))).type).toBe('CheckpointNotFound');
    expect(f.calls()).toHaveLength(0);
  });

  test('releaseCheckpointsByLabel releases what a lost reply left behind', async () => {
    const f = fakeHost([
      { op: 'checkpoints-by-label', expectParams: { vm: WIN_VM, label: 'backup/sql01/9' }, result: { vmId: WIN_VM, checkpointIds: CKPT.toUpperCase() } },
      { op: 'release-checkpoint', expectParams: { checkpointId: CKPT }, fixture: 'release.json' },
    ]);
    expect(await f.adapter.releaseCheckpointsByLabel(WIN_VM, 'backup/sql01/9')).toEqual([CKPT]);
  });
});

describe('changedRanges (Resilient Change Tracking)', () => {
  const describeStep = { op: 'describe-checkpoint', fixture: 'describe-checkpoint.json', expectParams: { vm: WIN_VM, checkpointId: CKPT } };

  test('GetVirtualDiskChanges is asked again from where it stopped until the disk is covered', async () => {
    // scsi0-0 is 1 GiB in describe-checkpoint.json; the fake processes less than asked each time.
    const f = fakeHost([
      describeStep,
      {
        op: 'disk-changes',
        expectParams: { path: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01.vhdx', limitId: 'rctX:base:1', offset: 0, length: GiB, maxQueryBytes: GiB - MiB },
        expectCmdlets: ['Msvm_ImageManagementService', '-MethodName GetVirtualDiskChanges', 'ProcessedByteLength', 'LimitId = [string]$p.limitId'],
        result: { pages: { ByteOffset: 0, ByteLength: GiB - MiB, ProcessedByteLength: 256 * MiB, ChangedByteOffsets: [0, 64 * MiB], ChangedByteLengths: [MiB, 2 * MiB] }, failed: null },
      },
      {
        op: 'disk-changes',
        expectParams: { offset: 256 * MiB, length: 768 * MiB },
        result: {
          pages: [
            { ByteOffset: 256 * MiB, ByteLength: 768 * MiB, ProcessedByteLength: 128 * MiB, ChangedByteOffsets: [], ChangedByteLengths: [] },
            { ByteOffset: 384 * MiB, ByteLength: 640 * MiB, ProcessedByteLength: 128 * MiB, ChangedByteOffsets: 500 * MiB, ChangedByteLengths: 4 * MiB },
          ],
          failed: null,
        },
      },
      {
        op: 'disk-changes',
        expectParams: { offset: 512 * MiB, length: 512 * MiB },
        result: {
          pages: [
            { ByteOffset: 512 * MiB, ByteLength: 512 * MiB, ProcessedByteLength: 512 * MiB, ChangedByteOffsets: [512 * MiB, 513 * MiB, GiB - 4096], ChangedByteLengths: [MiB, MiB, 65536] },
          ],
          failed: null,
        },
      },
    ]);
    const r = await f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', 'rctX:base:1');
    expect(r).toEqual({
      tracked: true,
      ranges: [
        { offset: 0, length: MiB },
        { offset: 64 * MiB, length: 2 * MiB },
        { offset: 500 * MiB, length: 4 * MiB },
        { offset: 512 * MiB, length: 2 * MiB },
        { offset: GiB - 4096, length: 4096 }, // clipped to the disk
      ],
    });
    expect(f.remaining()).toBe(0);
  });

  test('the checkpoint placeholder id resolves to the RCT id its reference point got', async () => {
    const f = fakeHost([
      { op: 'release-checkpoint', fixture: 'release.json' },
      { ...describeStep, expectParams: { vm: WIN_VM, checkpointId: '7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d' } },
      {
        op: 'disk-changes',
        expectParams: { limitId: 'rctX:c4f2a1b0:8d3e:4f51:a6b2:9c0d1e2f3a4b:00000002' },
        result: { pages: [{ ByteOffset: 0, ByteLength: GiB - MiB, ProcessedByteLength: GiB, ChangedByteOffsets: [], ChangedByteLengths: [] }], failed: null },
      },
    ]);
    await f.adapter.releaseCheckpoint(WIN_VM, CKPT);
    const r = await f.adapter.changedRanges(WIN_VM, '7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d', 'scsi0-0', `${PENDING_RCT_PREFIX}${CKPT}`);
    expect(r).toEqual({ tracked: true, ranges: [] });
  });

  test('a transient failure (32774 in use) is asked again from where it got to, not read in full', async () => {
    const f = fakeHost(
      [
        describeStep,
        {
          op: 'disk-changes',
          expectParams: { offset: 0 },
          result: {
            pages: [{ ByteOffset: 0, ByteLength: GiB - MiB, ProcessedByteLength: 512 * MiB, ChangedByteOffsets: [0], ChangedByteLengths: [MiB] }],
            failed: { message: 'GetVirtualDiskChanges returned 32774', details: { returnValue: 32774 } },
          },
        },
        { op: 'disk-changes', result: { pages: [], failed: { message: 'job still running after 60 s', details: { jobTimedOut: true } } }, expectParams: { offset: 512 * MiB } },
        {
          op: 'disk-changes',
          expectParams: { offset: 512 * MiB, length: 512 * MiB },
          result: { pages: [{ ByteOffset: 512 * MiB, ByteLength: 512 * MiB, ProcessedByteLength: 512 * MiB, ChangedByteOffsets: [600 * MiB], ChangedByteLengths: [MiB] }], failed: null },
        },
      ],
      { rctRetryDelayMs: 1 },
    );
    const r = await f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', 'rctX:base:1');
    expect(r).toEqual({ tracked: true, ranges: [{ offset: 0, length: MiB }, { offset: 600 * MiB, length: MiB }] });
    expect(f.remaining()).toBe(0);
  });

  test('transient failures past the attempts, or an error that is no reset, fail the call by name (never a silent full read)', async () => {
    const busy = { op: 'disk-changes', result: { pages: [], failed: { message: 'returned 32777', details: { returnValue: 32777 } } } };
    const f = fakeHost([describeStep, busy, busy, busy], { rctRetryDelayMs: 1, rctAttempts: 3 });
    const e = await rejection(f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', 'rctX:base:1'));
    expect(e.type).toBe('HypervisorCommandFailed');
    expect(e.message).toContain('32777 system is not available');
    expect(e.details).toMatchObject({ transient: true, attempts: 3, returnValue: 32777 });
    f.next([describeStep, { op: 'disk-changes', result: { pages: [], failed: { message: 'returned 32779', details: { returnValue: 32779 } } } }]);
    const notFound = await rejection(f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', 'rctX:base:1'));
    expect(notFound.message).toContain('32779 file not found');
  });

  test('a reset is named: 32773 (the disk does not know the id) and a failed job give tracked: false saying why', async () => {
    const f = fakeHost([
      describeStep,
      { op: 'disk-changes', result: { pages: [], failed: { message: 'GetVirtualDiskChanges returned 32773', details: { returnValue: 32773 } } } },
      describeStep,
      { op: 'disk-changes', result: { pages: [], failed: { message: 'job ended in state 10: The change tracking id is invalid', details: { jobState: 10, errorCode: 32768 } } } },
    ]);
    const a = await f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', 'rctX:old:1');
    expect(a.tracked).toBe(false);
    expect(a.reason).toMatch(/^change tracking reset on .*SQL01\.vhdx since 'rctX:old:1' \(return value 32773 invalid parameter\)/);
    const b = await f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', 'rctX:old:1');
    expect(b.reason).toContain('job ended in state 10, error code 32768');
  });

  test('an unknown placeholder, a failed query or no progress mean: read everything', async () => {
    const f = fakeHost([
      describeStep,
      describeStep,
      { op: 'disk-changes', result: { pages: [], failed: { message: 'GetVirtualDiskChanges returned 32773', details: { returnValue: 32773 } } } },
      describeStep,
      { op: 'disk-changes', result: { pages: [{ ByteOffset: 0, ByteLength: GiB - MiB, ProcessedByteLength: 0, ChangedByteOffsets: [], ChangedByteLengths: [] }], failed: null } },
    ]);
    const unknown = await f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', `${PENDING_RCT_PREFIX}11111111-2222-4333-8444-555555555555`);
    expect(unknown.tracked).toBe(false);
    expect(unknown.reason).toMatch(/RCT id is unknown/);
    const failed = await f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', 'rctX:reset:7');
    expect(failed).toMatchObject({ tracked: false, ranges: [] });
    expect(failed.reason).toContain('32773');
    const stuck = await f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', 'rctX:base:1');
    expect(stuck.tracked).toBe(false);
    expect(stuck.reason).toMatch(/no progress/);
    expect(f.remaining()).toBe(0);
  });

  test('a resized or replaced disk is a named reset before any GetVirtualDiskChanges; a moved file with the same VHDX id is not', async () => {
    const fx = (name: string) => JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', name), 'utf8'));
    const VHDX_ID = '{8A1B2C3D-4E5F-4A6B-9C7D-8E9FA0B1C2D3}';
    const NEXT = '7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d';
    const frozen = (over: Record<string, unknown>) => {
      const d = fx('describe-checkpoint.json');
      d.disks[0] = { ...d.disks[0], Size: GiB, DiskIdentifier: VHDX_ID, ...over };
      return { ...d, checkpointId: NEXT };
    };
    const created = fx('create-checkpoint-online.json');
    created.disks[0] = { ...created.disks[0], Size: GiB, DiskIdentifier: VHDX_ID };
    const rpId = 'rctX:c4f2a1b0:8d3e:4f51:a6b2:9c0d1e2f3a4b:00000002'; // release.json's id for scsi0-0
    // No disk-changes step for the first three: the fake fails the test if the adapter asks anyway.
    const f = fakeHost([
      { op: 'create-checkpoint', result: created },
      { op: 'release-checkpoint', fixture: 'release.json' },
      { op: 'describe-checkpoint', result: frozen({ Size: 2 * GiB }) },
      { op: 'describe-checkpoint', result: frozen({ DiskIdentifier: '{11111111-2222-4333-8444-555555555555}' }) },
      { op: 'describe-checkpoint', result: frozen({ DiskIdentifier: '', Path: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-new.vhdx' }) },
      { op: 'describe-checkpoint', result: frozen({ Path: 'E:\\VMs\\sql01\\SQL01.VHDX' }) },
      { op: 'disk-changes', expectParams: { limitId: rpId }, result: { pages: [{ ByteOffset: 0, ByteLength: GiB - MiB, ProcessedByteLength: GiB, ChangedByteOffsets: [MiB], ChangedByteLengths: [MiB] }], failed: null } },
    ]);
    await f.adapter.createBackupCheckpoint(WIN_VM, { mode: 'online', label: 'backup/sql01/7' });
    await f.adapter.releaseCheckpoint(WIN_VM, CKPT);
    const resized = await f.adapter.changedRanges(WIN_VM, NEXT, 'scsi0-0', `${PENDING_RCT_PREFIX}${CKPT}`);
    expect(resized).toMatchObject({ tracked: false, ranges: [] });
    expect(resized.reason).toMatch(/^change tracking reset on scsi0-0 \(.*SQL01\.vhdx\): the disk was resized since the reference point \(1073741824 → 2147483648 bytes\)/);
    const replaced = await f.adapter.changedRanges(WIN_VM, NEXT, 'scsi0-0', rpId);
    expect(replaced.reason).toMatch(/^change tracking reset on scsi0-0 .*replaced since the reference point \(virtual disk id 8a1b2c3d-4e5f-4a6b-9c7d-8e9fa0b1c2d3 → 11111111-2222-4333-8444-555555555555\)/);
    // Without an id to compare, another file in the drive's place is a replacement.
    const otherFile = await f.adapter.changedRanges(WIN_VM, NEXT, 'scsi0-0', rpId);
    expect(otherFile.reason).toMatch(/replaced since the reference point \(file .*SQL01\.vhdx → .*SQL01-new\.vhdx\)/);
    // Storage migration moves the file; the VHDX keeps its id and RCT carries on.
    expect(await f.adapter.changedRanges(WIN_VM, NEXT, 'scsi0-0', rpId)).toEqual({ tracked: true, ranges: [{ offset: MiB, length: MiB }] });
    expect(f.remaining()).toBe(0);
    expect(f.calls().filter((c) => c.mismatch)).toEqual([]);
  });

  test('a disk the checkpoint does not have is CheckpointNotFound', async () => {
    const f = fakeHost([describeStep, { op: 'describe-checkpoint', error: { type: 'CheckpointNotFound', message: 'checkpoint does not exist', cmdlet: 'Get-VMSnapshot' } }]);
    expect((await rejection(f.adapter.changedRanges(WIN_VM, CKPT, 'ide0-0', 'x'))).type).toBe('CheckpointNotFound');
    expect((await rejection(f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', 'x'))).type).toBe('CheckpointNotFound');
  });
});

describe('openCheckpointDisk', () => {
  test('reads the frozen VHDX of the checkpoint with the project VHDX reader', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-hyperv-vhdx-'));
    const file = path.join(dir, 'frozen.vhdx');
    await createDynamicVhdx(file, { virtualSize: 64 * MiB, blockSize: MiB });
    const w = await openVhdx(file, { writable: true });
    await w.write(3 * MiB, Buffer.alloc(4096, 0xab));
    await w.close();
    const describe = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'describe-checkpoint.json'), 'utf8'));
    describe.disks[0].Path = file;
    const f = fakeHost([{ op: 'describe-checkpoint', result: describe }]);
    const reader = await f.adapter.openCheckpointDisk(WIN_VM, CKPT, 'scsi0-0');
    try {
      expect(reader.virtualSize).toBe(64 * MiB);
      expect((await reader.read(3 * MiB, 4096)).equals(Buffer.alloc(4096, 0xab))).toBe(true);
      expect((await reader.read(0, 512)).equals(Buffer.alloc(512))).toBe(true);
      const ranges = await reader.allocatedRanges();
      expect(ranges.some((r) => r.offset <= 3 * MiB && r.offset + r.length >= 3 * MiB + 4096)).toBe(true);
    } finally {
      await reader.close();
    }
  });

  test('a file that cannot be opened is a clear error naming it', async () => {
    const describe = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'describe-checkpoint.json'), 'utf8'));
    describe.disks[0].Path = '/nonexistent/SQL01.vhdx';
    const f = fakeHost([{ op: 'describe-checkpoint', result: describe }]);
    const e = await rejection(f.adapter.openCheckpointDisk(WIN_VM, CKPT, 'scsi0-0'));
    expect(e.type).toBe('HypervisorCommandFailed');
    expect(e.message).toContain('/nonexistent/SQL01.vhdx');
  });
});

describe('pause, save, resume', () => {
  test('Suspend-VM, Save-VM, Resume-VM / Start-VM by action', async () => {
    const f = fakeHost([
      { op: 'power', expectParams: { vm: WIN_VM, action: 'pause' }, expectCmdlets: ['Suspend-VM -VM $vm'], result: { before: 'Running', after: 'Paused' } },
      { op: 'power', expectParams: { vm: WIN_VM, action: 'save' }, expectCmdlets: ['Save-VM -VM $vm'], result: { before: 'Paused', after: 'Saved' } },
      { op: 'power', expectParams: { vm: WIN_VM, action: 'resume' }, expectCmdlets: ['Resume-VM -VM $vm', 'Start-VM -VM $vm'], result: { before: 'Saved', after: 'Running' } },
    ]);
    await f.adapter.pauseVm(WIN_VM);
    await f.adapter.saveVm(WIN_VM);
    await f.adapter.resumeVm(WIN_VM);
    expect(f.remaining()).toBe(0);
  });
});

describe('failures', () => {
  test('a failed cmdlet: HypervisorCommandFailed with the cmdlet, exit code and stderr', async () => {
    const f = fakeHost([
      {
        op: 'power',
        error: { type: 'HypervisorCommandFailed', message: "'SQL01' failed to save. (Virtual machine ID 6F1C2A3B-…)", cmdlet: 'Save-VM', step: 'Save-VM' },
        stderr: '#< CLIXML\r\nSave-VM : \'SQL01\' failed to save.\r\nAt line:1 char:1\r\n',
        exitCode: 1,
      },
    ]);
    const e = await rejection(f.adapter.saveVm(WIN_VM));
    expect(e.type).toBe('HypervisorCommandFailed');
    expect(e.message).toContain('Save-VM failed');
    expect(e.details).toMatchObject({ cmdlet: 'Save-VM', exitCode: 1, op: 'power' });
    expect(String(e.details.stderr)).toMatch(/^Save-VM : 'SQL01' failed to save\./);
  });

  test('PowerShell dying without a result: exit code and stderr first lines', async () => {
    const f = fakeHost([
      {
        op: 'inspect',
        raw: '',
        stderr: "Get-VM : The term 'Get-VM' is not recognized as the name of a cmdlet.\r\nAt line:1 char:1\r\n+ Get-VM\r\nl4\r\nl5\r\nl6\r\nl7\r\n",
        exitCode: 1,
      },
    ]);
    const e = await rejection(f.adapter.inspectVm('SQL01'));
    expect(e.type).toBe('HypervisorCommandFailed');
    expect(e.message).toContain('exit code 1');
    expect(e.message).toContain("The term 'Get-VM' is not recognized");
    expect(String(e.details.stderr).split('\n')).toHaveLength(5);
  });

  test('a result line with ok wins over a non-zero exit code (-Command - mirrors $?)', async () => {
    const f = fakeHost([{ op: 'list', fixture: 'list-single.json', exitCode: 1 }]);
    expect(await f.adapter.listVms()).toHaveLength(1);
  });

  test('garbage instead of the result line is a failure, not a crash', async () => {
    const f = fakeHost([{ op: 'list', raw: 'HVPROTECT-JSON:{not json\r\n', exitCode: 0 }]);
    const e = await rejection(f.adapter.listVms());
    expect(e.message).toContain('no result line');
  });

  test('a command that hangs is killed at the timeout', async () => {
    const f = fakeHost([{ op: 'list', fixture: 'list.json', sleepMs: 10_000 }], { timeoutMs: 400 });
    const started = Date.now();
    const e = await rejection(f.adapter.listVms());
    expect(Date.now() - started).toBeLessThan(5000);
    expect(e.type).toBe('HypervisorCommandFailed');
    expect(e.details.timedOut).toBe(true);
    expect(e.message).toMatch(/did not finish within 400 ms/);
  });

  test('an offline checkpoint that times out tries to resume the VM', async () => {
    const f = fakeHost(
      [
        { op: 'create-checkpoint', fixture: 'create-checkpoint-offline.json', sleepMs: 30_000, record: { quiesced: 'save', checkpointId: null } },
        { op: 'power', expectParams: { action: 'resume-held', held: 'save' }, result: { before: 'Saved', after: 'Running' } },
      ],
      // Long enough for the fake to start and write its record on a loaded machine.
      { checkpointTimeoutMs: 4000 },
    );
    const e = await rejection(f.adapter.createBackupCheckpoint(LINUX_VM, { mode: 'offline', offlineMethod: 'save' }));
    expect(e.details).toMatchObject({ timedOut: true, resumedAfterFailure: true });
  });

  test('no PowerShell at all', async () => {
    const a = new HyperVHypervisor({ env: { PATH: '/nonexistent-dir' } });
    const e = await rejection(a.listVms());
    expect(e.message).toMatch(/no PowerShell found/);
    const b = new HyperVHypervisor({ powershell: '/nonexistent-dir/pwsh' });
    expect((await rejection(b.listVms())).message).toMatch(/cannot run PowerShell/);
  });
});

describe('the RCT store going wrong never makes up changes', () => {
  test('a damaged store: inspect reports no base, a placeholder reads everything', async () => {
    const f = fakeHost([
      { op: 'inspect', fixture: 'inspect-windows.json' },
      { op: 'describe-checkpoint', fixture: 'describe-checkpoint.json' },
    ]);
    fs.mkdirSync(path.join(f.dir, 'rct'), { recursive: true });
    fs.writeFileSync(path.join(f.dir, 'rct', `${WIN_VM}.json`), '{"version":1,"entr');
    const facts = await f.adapter.inspectVm(WIN_VM);
    expect(facts.disks.every((d) => d.changeTrackingId === undefined)).toBe(true);
    const r = await f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', `${PENDING_RCT_PREFIX}${CKPT}`);
    expect(r.tracked).toBe(false);
  });

  test('a disk of unknown size is not "unchanged"', async () => {
    const describe = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'describe-checkpoint.json'), 'utf8'));
    delete describe.disks[0].Size;
    const f = fakeHost([{ op: 'describe-checkpoint', result: describe }]);
    expect(await f.adapter.changedRanges(WIN_VM, CKPT, 'scsi0-0', 'rctX:1')).toMatchObject({ tracked: false });
  });
});
