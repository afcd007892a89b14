// The hypervisor adapter: what host activities call, whatever the hypervisor is.
// Two implementations: `lab` (file-backed host for Linux) and `hyperv` (PowerShell + WMI).
// Everything here is plain JSON-serialisable data so facts can travel through Temporal.

export type VmState = 'running' | 'paused' | 'saved' | 'off';
export type StorageKind = 'local' | 'csv' | 'smb';
export type ReplicaRole = 'none' | 'primary' | 'replica';
export type ClusterGroupState = 'online' | 'offline' | 'partial' | 'failed';

export interface GuestVolume {
  /** Drive letter or mount point as the guest names it, e.g. "C:" or "/". */
  name: string;
  /** NTFS, ReFS, FAT32, ext4, xfs… */
  fileSystem: string;
  /** Guest-level dynamic disk (LDM) rather than basic. */
  dynamicDisk: boolean;
  /** Volume whose shadow storage holds this volume's shadow copies (undefined = itself). */
  shadowStorageOn?: string;
}

export interface VmDisk {
  /** Stable id of the disk within the VM (controller location, e.g. "scsi0-0"). */
  diskId: string;
  /** Path of the disk file the VM writes to now (an AVHDX while a checkpoint exists). */
  path: string;
  /** Path of the base disk that holds the data (the VHDX under any checkpoints). */
  basePath: string;
  virtualSize: number;
  storage: StorageKind;
  /** SMB share server for `storage === 'smb'`, e.g. "fs01". */
  fileServer?: string;
  passthrough: boolean;
  controller: 'ide' | 'scsi';
  /** Change-tracking id (RCT id) at the last reference point, if any. */
  changeTrackingId?: string;
}

export interface VmFacts {
  vmId: string;
  name: string;
  host: string;
  state: VmState;
  guestOs: string;
  /** Guest OS family, as the backup-mode rule needs it. */
  guestOsFamily: 'windows' | 'linux' | 'other';
  /** Windows version number string when known, e.g. "10.0.17763" (Server 2019). */
  guestOsVersion?: string;
  integrationServices: {
    /** "VSS" in Get-VMIntegrationService ("Backup (volume shadow copy)" in the GUI). */
    backup: { enabled: boolean; responding: boolean };
    heartbeat?: { enabled: boolean; responding: boolean };
  };
  volumes: GuestVolume[];
  disks: VmDisk[];
  cluster?: { name: string; groupState: ClusterGroupState; ownerNode: string; nodes: string[] };
  replica: { role: ReplicaRole; primaryServer?: string; replicaServer?: string };
  /** Folder with the VM's configuration (for restore to the original place). */
  configPath: string;
  /** Opaque VM configuration a restore needs to recreate the VM. */
  config: Record<string, unknown>;
  /** Backup checkpoints that exist now (left over ones show up here). */
  checkpoints: { checkpointId: string; createdAt: string; kind: 'backup' | 'standard'; label?: string }[];
  /**
   * Guest facts this host cannot see, named (e.g. guest volumes: file systems, dynamic disks and
   * shadow storage live inside the guest). `volumes` then lists only what is known (maybe nothing);
   * the backup-mode rules do not count an unknown as a reason to go offline.
   */
  unknownGuestFacts?: string[];
  /**
   * 'production': the host takes production checkpoints (Hyper-V 2016+): application-consistent
   * where the guest can (VSS in Windows, a file-system freeze in Linux with the backup integration
   * service), else crash-consistent on the running VM. Absent: the rule table alone decides.
   */
  checkpointConsistency?: 'production';
  /** What cannot be backed up at host level on this VM, each with what to do (named at inspect). */
  unsupported?: { diskId?: string; what: string; remedy: string }[];
}

export interface VmSummary {
  vmId: string;
  name: string;
  host: string;
  state: VmState;
  cluster?: string;
}

export type BackupMode = 'online' | 'offline';
/** How an offline checkpoint makes the VM quiet: save its memory to disk, or just pause it. */
export type OfflineMethod = 'save' | 'pause';

export interface BackupCheckpoint {
  checkpointId: string;
  vmId: string;
  host: string;
  mode: BackupMode;
  createdAt: string;
  /** Per disk: the frozen image to read (base VHDX chain) and its change-tracking id at this point. */
  disks: { diskId: string; frozenPath: string; virtualSize: number; changeTrackingId: string }[];
  /** For offline: how long the VM was unavailable, in milliseconds. */
  downtimeMs?: number;
  /** The consistency the checkpoint achieved, and why when it is less than asked. */
  consistency?: { achieved: 'application-consistent' | 'crash-consistent'; reason?: string };
  /** For lab hosts: the guest write-load sequence number at checkpoint time (tests use it). */
  guestWriteSeq?: number;
}

export interface ChangedRanges {
  /** false when change tracking cannot answer (lost, reset, unknown id): read everything. */
  tracked: boolean;
  ranges: { offset: number; length: number }[];
  reason?: string;
}

/** Reads a frozen disk of a checkpoint. Unallocated space reads as zeros. */
export interface DiskReader {
  readonly virtualSize: number;
  /** `signal`: the backup was cancelled; an adapter whose read can take long stops and throws. */
  read(offset: number, length: number, signal?: AbortSignal): Promise<Buffer>;
  /**
   * Optional: fills all of `target` with the bytes at `offset`, in memory the caller reuses. The
   * backup pipeline reads every batch into one of a few buffers this way: a fresh buffer per read
   * was gigabytes of new external memory per backup, and each 64 MB of it set off a full GC of
   * the agent's heap.
   */
  readInto?(target: Buffer, offset: number, signal?: AbortSignal): Promise<void>;
  /** Ranges that hold data (a reader may skip the rest), sorted and merged. */
  allocatedRanges(): Promise<{ offset: number; length: number }[]>;
  close(): Promise<void>;
}

export interface HypervisorAdapter {
  readonly hostName: string;
  listVms(): Promise<VmSummary[]>;
  /**
   * `vm` is an id or a name. Throws VmNotFound if the VM does not exist, VmNotOnHost (details.host =
   * its owner, when known) if it lives on another host now; every per-VM method below does the same.
   */
  inspectVm(vm: string): Promise<VmFacts>;
  isVmOnHost(vm: string): Promise<boolean>;
  /**
   * How often a long transfer asks isVmOnHost, in ms: 0 or absent = after every batch, waited for
   * (cheap answers: the lab). Where each ask is expensive (a PowerShell process on Hyper-V), at
   * most this often, in the background (activities/host/placement-check.ts).
   */
  readonly placementCheckMs?: number;
  createBackupCheckpoint(
    vmId: string,
    /**
     * offlineMethod: how a running VM is made quiet for an offline checkpoint; undefined or
     * 'none' = do not touch the VM (it is off, saved, paused or a replica).
     * label: the caller's id (the backup workflow id). A checkpoint with this label that already
     * exists is returned instead of making a second one, so a retried call is idempotent.
     */
    opts: {
      mode: BackupMode;
      offlineMethod?: OfflineMethod | 'none';
      label?: string;
      /**
       * The backup was cancelled: an adapter may stop before the checkpoint exists (leaving the VM
       * as it found it) or finish; either way the caller waits and then releases by label.
       */
      signal?: AbortSignal;
    },
  ): Promise<BackupCheckpoint>;
  /**
   * Releases a backup checkpoint: merges the differencing disks back (lab) or converts it to
   * a reference point (Hyper-V), and resumes the VM only if this checkpoint paused or saved it and
   * it still is (a VM someone else paused or saved is left as it is).
   * Idempotent: releasing a checkpoint that is already gone succeeds.
   */
  releaseCheckpoint(vmId: string, checkpointId: string): Promise<void>;
  /**
   * Releases every backup checkpoint of the VM carrying `label` (cleanup after a lost reply), and
   * resumes a VM an attempt with that label quieted and never resumed (killed before its checkpoint existed).
   */
  releaseCheckpointsByLabel?(vmId: string, label: string): Promise<string[]>;
  /** Changed ranges of a disk between change-tracking id `sinceId` and the checkpoint. */
  changedRanges(vmId: string, checkpointId: string, diskId: string, sinceId: string): Promise<ChangedRanges>;
  openCheckpointDisk(vmId: string, checkpointId: string, diskId: string): Promise<DiskReader>;
  /**
   * Restore: registers a VM on this host from its backed-up config and restored VHDX files, off.
   * `replace` restores to the original place over the VM of the same id (which must be off).
   * Optional: an adapter without it can still export disks.
   */
  importVm?(opts: { config: unknown; disks: { diskId: string; path: string }[]; vmId?: string; name?: string; replace?: boolean }): Promise<VmFacts>;
  startVm?(vmId: string): Promise<void>;
  pauseVm(vmId: string): Promise<void>;
  saveVm(vmId: string): Promise<void>;
  resumeVm(vmId: string): Promise<void>;
}

/** Error names host activities turn into non-retryable Temporal failures. */
export const HypervisorErrorType = {
  VmNotFound: 'VmNotFound',
  VmNotOnHost: 'VmNotOnHost',
  CheckpointNotFound: 'CheckpointNotFound',
  ChangeTrackingLost: 'ChangeTrackingLost',
  HypervisorCommandFailed: 'HypervisorCommandFailed',
} as const;
export type HypervisorErrorType = (typeof HypervisorErrorType)[keyof typeof HypervisorErrorType];

export class HypervisorError extends Error {
  constructor(
    readonly type: HypervisorErrorType,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = type;
  }
}
