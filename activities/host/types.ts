// What the host agents do for a backup, as the workflow sees it (types only: no I/O here).
import type { BackupCheckpoint, OfflineMethod, ReplicaRole, VmFacts, VmSummary, BackupMode } from '../../hypervisor/types';

export interface VmLocation {
  host: string;
  present: boolean;
  vmId?: string;
  name?: string;
  role?: ReplicaRole;
  cluster?: string;
  /**
   * What the probe's inspection found (the probe inspects the VM to answer): a backup takes its
   * facts from here instead of inspecting again. Absent from agents before it was added.
   */
  facts?: VmFacts;
}

/** The protection server a step works for: the agent answers only servers it holds a credential for. */
export interface ServerEndpoint {
  id: string;
  storageUrl: string;
}

export interface CheckpointRequest {
  vmId: string;
  mode: BackupMode;
  offlineMethod: OfflineMethod | 'none';
  /** The backup workflow id: makes a retried request return the same checkpoint. */
  label: string;
}

export type TransferKind = 'initial-replica' | 'express-full' | 'consistency-check';

export interface DiskTransferRequest {
  workflowId: string;
  /** Where the chunks go: the server that owns the data source. */
  server: ServerEndpoint;
  /** The server's grant for this job's session (storage-api/grants.ts): uploads to it, nothing else. */
  grant: string;
  dataSource: string;
  /** Storage session (holds uploaded chunks and index slots against GC until commit). */
  sessionId: string;
  vmId: string;
  checkpointId: string;
  diskId: string;
  virtualSize: number;
  chunkSize: number;
  /** Change-tracking id of this disk at the checkpoint (the base of the next incremental). */
  changeTrackingId: string;
  kind: TransferKind;
  /** Read by the agent of the SMB file server that holds the disk, not the VM's host. */
  viaFileServer?: boolean;
  /** The previous recovery point of this disk, when there is one. */
  base?: { pointId: string; changeTrackingId?: string; virtualSize: number; chunkSize: number };
  /**
   * Where the transfer stood on the host the VM left (from its VmNotOnHost failure): resumed there
   * when this host reads the same sequence of slots (within a cluster), else the disk starts over.
   */
  resume?: TransferHeartbeat;
}

export interface DiskTransferResult {
  diskId: string;
  /** The host whose agent read the disk (the file server's for disks on its SMB shares). */
  readBy: string;
  /** What was actually done: an express full falls back to a consistency check when tracking is lost. */
  kind: TransferKind;
  fallbackReason?: string;
  chunkCount: number;
  changedChunks: number;
  bytesRead: number;
  bytesSent: number;
  /** Chunks that already were in the repository (dedup) among those read. */
  chunksDeduplicated: number;
  resumedFrom: number;
  /** Bytes this attempt read from the disk (bytesRead includes what earlier attempts read). */
  attemptBytesRead: number;
  /** The host whose position this transfer carried on from (after following the VM). */
  resumedAfter?: string;
  /** Why the position from the host the VM left was not used (the disk was read again from its start). */
  startedOverBecause?: string;
  durationMs: number;
}

/**
 * What transferDisk heartbeats after every batch: where a retry resumes (the ingest position), and
 * the progress the CLI and the Web UI read from the pending activity (never history events).
 */
export interface TransferHeartbeat {
  /** Index into the slot sequence: where a retry resumes. */
  nextSlot: number;
  bytesRead: number;
  bytesSent: number;
  chunksSent: number;
  chunksDeduplicated: number;
  zeroChunks: number;
  changedChunks: number;
  kind: TransferKind;
  fallbackReason?: string;
  diskId: string;
  /** Disk offset below which everything is done. */
  position: number;
  virtualSize: number;
  /** Agent clock, ms since epoch. */
  at: number;
  /** The host whose agent read it. */
  readBy?: string;
  /** Identifies the sequence of slots read (kind, base, extents): a position applies only to the same sequence. */
  fingerprint?: string;
}

export interface ReleaseRequest {
  vmId: string;
  label: string;
  checkpointId?: string;
}

export interface HostActivities {
  listVms(): Promise<VmSummary[]>;
  locateVm(vm: string): Promise<VmLocation>;
  inspectVm(vm: string): Promise<VmFacts>;
  createBackupCheckpoint(req: CheckpointRequest): Promise<BackupCheckpoint>;
  transferDisk(req: DiskTransferRequest): Promise<DiskTransferResult>;
  releaseBackupCheckpoint(req: ReleaseRequest): Promise<{ released: string[] }>;
}
