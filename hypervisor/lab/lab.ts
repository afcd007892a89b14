// The lab: file-backed Hyper-V hosts, clusters and VMs for Linux (tests, benchmarks, `npm start`).
// `Lab` is the one entry point; each section lives in a file of its own over the store (store.ts):
// fabric.ts (hosts, clusters), vm-config.ts (VMs and their facts), power.ts (VM states),
// guest-io.ts (the guest's writes), checkpoints.ts (backup checkpoints, change tracking),
// migration.ts (migration, replica, deletion, import).
import type { BackupCheckpoint, BackupMode, ChangedRanges, DiskReader, OfflineMethod, VmFacts, VmSummary } from '../types';
import * as checkpoints from './checkpoints';
import * as fabric from './fabric';
import * as guestIo from './guest-io';
import type { StartWriteLoadOptions, WriteLoadProcess } from './guest-io';
import * as migration from './migration';
import type { LabImportOptions, MigrationResult } from './migration';
import * as power from './power';
import type { CheckpointRecord, LabState, VmRecord } from './state';
import { LabStore } from './store';
import * as vmConfig from './vm-config';
import type { LabVmConfig, LabVmPatch, LabVmSpec } from './vm-config';

export { LabError } from './store';
export type { StartWriteLoadOptions, WriteLoadProcess, WriteLoadResult } from './guest-io';
export type { LabImportOptions, MigrationResult } from './migration';
export type { LabDiskSpec, LabVmConfig, LabVmPatch, LabVmSpec, StorageSpec } from './vm-config';

export class Lab extends LabStore {
  private constructor(root: string) {
    super(root);
  }

  /** Open the lab at `root`, creating an empty one if there is none. */
  static override async open(root: string): Promise<Lab> {
    const lab = new Lab(root);
    await lab.init();
    return lab;
  }

  // ---- hosts and clusters ----

  createHost(name: string, opts: { fileServer?: boolean } = {}): Promise<void> {
    return fabric.createHost(this, name, opts);
  }

  /** Create a cluster of `nodes` (hosts are created if missing); adding nodes to an existing cluster is allowed. */
  createCluster(name: string, nodes: string[]): Promise<void> {
    return fabric.createCluster(this, name, nodes);
  }

  async getVm(vm: string): Promise<VmRecord> {
    return this.findVm(await this.state(), vm);
  }

  /** Who owns the VM now (follows migrations at once). */
  locateVm(vm: string): Promise<{ vmId: string; name: string; host: string; cluster?: string }> {
    return fabric.locateVm(this, vm);
  }

  listVms(host?: string): Promise<VmSummary[]> {
    return fabric.listVms(this, host);
  }

  // ---- VM configuration and facts ----

  async inspectVm(vm: string): Promise<VmFacts> {
    const s = await this.state();
    return this.facts(s, this.findVm(s, vm));
  }

  facts(s: LabState, vm: VmRecord): VmFacts {
    return vmConfig.facts(this, s, vm);
  }

  config(vm: VmRecord): LabVmConfig {
    return vmConfig.labVmConfig(vm);
  }

  /** Create a VM with real VHDX disks holding their initial content. */
  createVm(spec: LabVmSpec): Promise<VmFacts> {
    return vmConfig.createVm(this, spec);
  }

  setVmProperties(vm: string, patch: LabVmPatch): Promise<VmFacts> {
    return vmConfig.setVmProperties(this, vm, patch);
  }

  // ---- power states ----

  /** Start (or restore from saved) a VM; its disks must open, as a booting VM's would. */
  startVm(vm: string, host?: string): Promise<void> {
    return power.startVm(this, vm, host);
  }

  /** Turn a VM off. */
  stopVm(vm: string, host?: string): Promise<void> {
    return power.stopVm(this, vm, host);
  }

  pauseVm(vm: string, host?: string): Promise<void> {
    return power.transition(this, vm, host, 'paused');
  }

  saveVm(vm: string, host?: string): Promise<void> {
    return power.transition(this, vm, host, 'saved');
  }

  resumeVm(vm: string, host?: string): Promise<void> {
    return power.transition(this, vm, host, 'running');
  }

  // ---- guest I/O ----

  /** A guest write on a running VM's disk (change-tracking log first, then the data). */
  writeDisk(vm: string, diskId: string, offset: number, data: Buffer): Promise<void> {
    return guestIo.writeDisk(this, vm, diskId, offset, data);
  }

  /** What the guest sees now on a disk (through any checkpoint's AVHDX). */
  readDisk(vm: string, diskId: string, offset: number, length: number): Promise<Buffer> {
    return guestIo.readDisk(this, vm, diskId, offset, length);
  }

  /** Run a guest write load as a child process (see guest-write-load.ts); resolves once it writes. */
  startWriteLoad(opts: StartWriteLoadOptions): Promise<WriteLoadProcess> {
    return guestIo.startWriteLoad(this, opts);
  }

  // ---- backup checkpoints ----

  createBackupCheckpoint(host: string, vm: string, opts: { mode: BackupMode; offlineMethod?: OfflineMethod | 'none'; label?: string }): Promise<BackupCheckpoint> {
    return checkpoints.createBackupCheckpoint(this, host, vm, opts);
  }

  backupCheckpoint(rec: VmRecord, ck: CheckpointRecord): BackupCheckpoint {
    return checkpoints.backupCheckpoint(this, rec, ck);
  }

  releaseCheckpoint(host: string, vm: string, checkpointId: string): Promise<void> {
    return checkpoints.releaseCheckpoint(this, host, vm, checkpointId);
  }

  /** Release every backup checkpoint of the VM carrying `label`; returns their ids. */
  releaseCheckpointsByLabel(host: string, vm: string, label: string): Promise<string[]> {
    return checkpoints.releaseCheckpointsByLabel(this, host, vm, label);
  }

  changedRanges(host: string, vm: string, checkpointId: string, diskId: string, sinceId: string): Promise<ChangedRanges> {
    return checkpoints.changedRanges(this, host, vm, checkpointId, diskId, sinceId);
  }

  openCheckpointDisk(host: string, vm: string, checkpointId: string, diskId: string): Promise<DiskReader> {
    return checkpoints.openCheckpointDisk(this, host, vm, checkpointId, diskId);
  }

  // ---- migration, replicas, deletion, import ----

  /** Live-migrate a VM (within a cluster: ownership moves; outside: storage moves, tracking is lost). */
  migrateVm(vm: string, toHost: string): Promise<MigrationResult> {
    return migration.migrateVm(this, vm, toHost);
  }

  /** Enable Hyper-V Replica: a replica VM (own id in the lab, same name, off) on `replicaHost`, disks copied. */
  enableReplication(vm: string, replicaHost: string): Promise<VmFacts> {
    return migration.enableReplication(this, vm, replicaHost);
  }

  /** Delete a VM and its files. */
  deleteVm(vm: string): Promise<void> {
    return migration.deleteVm(this, vm);
  }

  /** Recreate a VM from a backed-up configuration and restored VHDX files (VM off; `replace` for the original place). */
  importVm(opts: LabImportOptions): Promise<VmFacts> {
    return migration.importVm(this, opts);
  }
}
