// decideBackupMode: online (VSS inside the guest, no downtime) or offline (the VM is made quiet
// while the checkpoint is taken), with every reason recorded. Pure, so the workflow runs it.
// Rules as DPM has them for Hyper-V guests:
//   online needs: backup integration service enabled; a guest OS with VSS (Windows, not Linux);
//   no dynamic disks; every volume NTFS; no volume's shadow storage on another volume; VM running;
//   a clustered VM's resource group online. A passthrough disk cannot be backed up at host level.
import type { VmFacts, BackupMode } from '../hypervisor/types';

/** How the VM is made quiet for the checkpoint. */
export type Quiesce = 'vss' | 'save' | 'pause' | 'none';

export interface BackupModePolicy {
  /** false: fail rather than save or pause a running VM (default true). */
  allowOffline?: boolean;
  /** How to make a running VM quiet for an offline backup (default 'save', as DPM does). */
  offlineMethod?: 'save' | 'pause';
}

export interface BackupModeDecision {
  mode: BackupMode;
  quiesce: Quiesce;
  /** Why online was not possible (empty when online). */
  reasons: string[];
}

export class BackupModeRefused extends Error {
  constructor(
    readonly type: 'PassthroughDiskNotSupported' | 'OfflineBackupNotAllowed' | 'HostLevelBackupNotSupported',
    message: string,
    readonly reasons: string[],
  ) {
    super(message);
    this.name = type;
  }
}

/** Reasons a VM cannot be backed up online; empty means online is possible. */
export function onlineBlockers(facts: VmFacts): string[] {
  const reasons: string[] = [];
  const vss = facts.integrationServices.backup;
  if (!vss.enabled) reasons.push('the Backup (volume shadow copy) integration service is disabled');
  else if (!vss.responding) reasons.push('the Backup (volume shadow copy) integration service is not responding in the guest');
  // A host with production checkpoints asks the guest (VSS, or a Linux file-system freeze) and falls
  // back to crash-consistent on the running VM: an unknown or non-Windows guest is no reason to stop it.
  const production = facts.checkpointConsistency === 'production';
  if (facts.guestOsFamily !== 'windows' && !(production && facts.guestOsFamily === 'linux') && !(production && facts.unknownGuestFacts?.some((f) => f.startsWith('guest OS')))) {
    reasons.push(`the guest OS (${facts.guestOs || facts.guestOsFamily}) has no VSS writer for host-level backup`);
  } else if (facts.guestOsVersion && versionBelow(facts.guestOsVersion, [5, 2])) {
    reasons.push(`the guest OS ${facts.guestOs} is older than Windows Server 2003 (no VSS)`);
  }
  const dynamic = facts.volumes.filter((v) => v.dynamicDisk).map((v) => v.name);
  if (dynamic.length) reasons.push(`guest volume(s) ${dynamic.join(', ')} are on dynamic disks`);
  const notNtfs = facts.volumes.filter((v) => v.fileSystem.toUpperCase() !== 'NTFS');
  if (notNtfs.length) reasons.push(`guest volume(s) ${notNtfs.map((v) => `${v.name} (${v.fileSystem})`).join(', ')} are not NTFS`);
  const redirected = facts.volumes.filter((v) => v.shadowStorageOn && v.shadowStorageOn !== v.name);
  if (redirected.length) {
    reasons.push(
      `shadow storage of ${redirected.map((v) => `${v.name} is on ${v.shadowStorageOn}`).join(', ')} (must be on the volume itself)`,
    );
  }
  if (facts.state !== 'running') reasons.push(`the VM is ${facts.state}, not running`);
  if (facts.cluster && facts.cluster.groupState !== 'online') {
    reasons.push(`the cluster resource group in ${facts.cluster.name} is ${facts.cluster.groupState}, not online`);
  }
  return reasons;
}

function versionBelow(version: string, min: [number, number]): boolean {
  const [major = 0, minor = 0] = version.split('.').map((x) => Number.parseInt(x, 10) || 0);
  return major < min[0] || (major === min[0] && minor < min[1]);
}

export function decideBackupMode(facts: VmFacts, policy: BackupModePolicy = {}): BackupModeDecision {
  const unsupported = (facts.unsupported ?? []).filter((u) => u.diskId === undefined || !facts.disks.find((d) => d.diskId === u.diskId)?.passthrough);
  if (unsupported.length) {
    throw new BackupModeRefused(
      'HostLevelBackupNotSupported',
      `VM ${facts.name} cannot be backed up at host level: ${unsupported.map((u) => `${u.what} (${u.remedy})`).join('; ')}`,
      unsupported.map((u) => u.what),
    );
  }
  const passthrough = facts.disks.filter((d) => d.passthrough).map((d) => d.diskId);
  if (passthrough.length) {
    throw new BackupModeRefused(
      'PassthroughDiskNotSupported',
      `VM ${facts.name} has passthrough disk(s) ${passthrough.join(', ')}, which host-level backup cannot read: ` +
        'protect this VM with guest-level protection (an agent inside the guest) instead',
      [`passthrough disk(s): ${passthrough.join(', ')}`],
    );
  }
  // A replica VM is applied to by replication, never run: read it without pausing anything.
  if (facts.replica.role === 'replica') {
    return { mode: 'offline', quiesce: 'none', reasons: ['a Hyper-V Replica secondary is backed up from the replica server without pausing'] };
  }
  const reasons = onlineBlockers(facts);
  if (reasons.length === 0) return { mode: 'online', quiesce: 'vss', reasons };
  // Off or saved: already quiet, nothing to pause.
  if (facts.state === 'off' || facts.state === 'saved') return { mode: 'offline', quiesce: 'none', reasons };
  if (policy.allowOffline === false) {
    throw new BackupModeRefused(
      'OfflineBackupNotAllowed',
      `VM ${facts.name} can only be backed up offline (${reasons.join('; ')}) and its protection policy forbids offline backups: ` +
        'fix the reasons above or allow offline backups (hvprotect protect add --allow-offline)',
      reasons,
    );
  }
  // Already paused: stays paused for the checkpoint, and is left as it was.
  if (facts.state === 'paused') return { mode: 'offline', quiesce: 'none', reasons };
  return { mode: 'offline', quiesce: policy.offlineMethod ?? 'save', reasons };
}
