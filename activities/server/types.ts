// What the protection server does for a backup, as the workflow sees it (types only).
import type { BackupMode } from '../../hypervisor/types';
import type { TransferKind, DiskTransferResult, ServerEndpoint } from '../host/types';

export interface BackupPlanRequest {
  dataSource: string;
  vmId: string;
  vmName: string;
  disks: { diskId: string; virtualSize: number }[];
  /** 'consistency-check' forces reading everything (on demand, or after a suspect replica). */
  requestedKind: 'auto' | 'consistency-check';
}

export interface BackupPlan {
  /** The kind for the whole point; disks may still fall back to a consistency check. */
  kind: TransferKind;
  reason: string;
  /** Storage session id: chunks uploaded under it are safe from GC until commit or abort. */
  sessionId: string;
  /** The agent's grant for this session (storage-api/grants.ts): uploads to it, nothing else. */
  grant: string;
  /** This server, for the agents' requests. */
  server: ServerEndpoint;
  disks: {
    diskId: string;
    chunkSize: number;
    kind: TransferKind;
    base?: { pointId: string; changeTrackingId?: string; virtualSize: number; chunkSize: number };
  }[];
}

export interface CommitRequest {
  dataSource: string;
  sessionId: string;
  workflowId: string;
  vm: { vmId: string; name: string; host: string; cluster?: string; config: Record<string, unknown>; configPath: string; guestWriteSeq?: number };
  mode: BackupMode;
  kind: TransferKind;
  modeReasons: string[];
  downtimeMs?: number;
  /** The consistency the checkpoint achieved (and why, when less than asked); absent when unknown. */
  consistency?: { achieved: 'application-consistent' | 'crash-consistent'; reason?: string };
  checkpointCreatedAt: string;
  /** When the backup workflow started (for the duration metric). */
  startedAt?: string;
  disks: (DiskTransferResult & { virtualSize: number; chunkSize: number; changeTrackingId: string; fileName: string })[];
}

export interface CommittedPoint {
  pointId: string;
  createdAt: string;
  storedBytes: number;
}

export interface RetentionResult {
  deleted: { pointId: string; reason: string }[];
}

export interface ServerActivities {
  listHosts(): Promise<string[]>;
  planBackup(req: BackupPlanRequest): Promise<BackupPlan>;
  commitRecoveryPoint(req: CommitRequest): Promise<CommittedPoint>;
  abortSession(req: { dataSource: string; sessionId: string }): Promise<void>;
  enforceRetention(req: { dataSource: string; keepPointId?: string }): Promise<RetentionResult>;
}
