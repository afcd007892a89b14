// The lab adapter: HypervisorAdapter for one lab host. Every per-VM call first checks that the VM
// is on this host (VmNotOnHost otherwise, naming its owner); the agent of an SMB file server may
// also read checkpoint disks and change tracking of disks on its shares.
import type {
  BackupCheckpoint,
  BackupMode,
  ChangedRanges,
  DiskReader,
  HypervisorAdapter,
  OfflineMethod,
  VmFacts,
  VmSummary,
} from '../types';
import { HypervisorError } from '../types';
import { Lab, type LabImportOptions } from './lab';

export class LabHypervisor implements HypervisorAdapter {
  private constructor(
    readonly lab: Lab,
    readonly hostName: string,
  ) {}

  /** The adapter for lab host `hostName` of the lab at `labRoot` (or an open Lab). */
  static async open(lab: Lab | string, hostName: string): Promise<LabHypervisor> {
    const l = typeof lab === 'string' ? await Lab.open(lab) : lab;
    const s = await l.state();
    if (!Object.prototype.hasOwnProperty.call(s.hosts, hostName)) {
      throw new HypervisorError('HypervisorCommandFailed', `no lab host ${JSON.stringify(hostName)} in lab ${l.root}`, { host: hostName });
    }
    return new LabHypervisor(l, hostName);
  }

  async listVms(): Promise<VmSummary[]> {
    return this.lab.listVms(this.hostName);
  }

  async inspectVm(vm: string): Promise<VmFacts> {
    const s = await this.lab.state();
    return this.lab.facts(s, this.lab.findVmOnHost(s, vm, this.hostName));
  }

  async isVmOnHost(vm: string): Promise<boolean> {
    const s = await this.lab.state();
    try {
      return this.lab.findVm(s, vm, this.hostName).host === this.hostName;
    } catch (e) {
      if (e instanceof HypervisorError && e.type === 'VmNotFound') return false;
      throw e;
    }
  }

  createBackupCheckpoint(vmId: string, opts: { mode: BackupMode; offlineMethod?: OfflineMethod | 'none'; label?: string }): Promise<BackupCheckpoint> {
    return this.lab.createBackupCheckpoint(this.hostName, vmId, opts);
  }

  releaseCheckpoint(vmId: string, checkpointId: string): Promise<void> {
    return this.lab.releaseCheckpoint(this.hostName, vmId, checkpointId);
  }

  releaseCheckpointsByLabel(vmId: string, label: string): Promise<string[]> {
    return this.lab.releaseCheckpointsByLabel(this.hostName, vmId, label);
  }

  changedRanges(vmId: string, checkpointId: string, diskId: string, sinceId: string): Promise<ChangedRanges> {
    return this.lab.changedRanges(this.hostName, vmId, checkpointId, diskId, sinceId);
  }

  openCheckpointDisk(vmId: string, checkpointId: string, diskId: string): Promise<DiskReader> {
    return this.lab.openCheckpointDisk(this.hostName, vmId, checkpointId, diskId);
  }

  pauseVm(vmId: string): Promise<void> {
    return this.lab.pauseVm(vmId, this.hostName);
  }

  saveVm(vmId: string): Promise<void> {
    return this.lab.saveVm(vmId, this.hostName);
  }

  resumeVm(vmId: string): Promise<void> {
    return this.lab.resumeVm(vmId, this.hostName);
  }

  /** Start a VM on this host (a restored VM "boots": its disks must open). */
  startVm(vmId: string): Promise<void> {
    return this.lab.startVm(vmId, this.hostName);
  }

  /** Restore: recreate a VM on this host from its backed-up config and restored VHDX files (VM off). */
  importVm(opts: Omit<LabImportOptions, 'host'>): Promise<VmFacts> {
    return this.lab.importVm({ ...opts, host: this.hostName });
  }
}
