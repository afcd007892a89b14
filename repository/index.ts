// Public surface of the repository library.
export { Repository, DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE, MAX_POINT_CHUNK_SIZE, REPOSITORY_FORMAT } from './repository';
export type { DataSourceSettings, OpenRepositoryOptions, RepositoryConfig } from './repository';
export { KeyedMutex } from './mutex';
export type { BackupSession, CommitPointInput, IndexCounters, SessionOwner } from './sessions';
export { sessionIdOf } from './sessions';
export type { PointDeletion, DeletionReason } from './points';
export type { RestoreLease } from './leases';
export { planRetention } from './retention';
export type { RetentionInput, RetentionPlan } from './retention';
export type {
  RecoveryPointManifest, RecoveryPointDisk, RecoveryPointKind, BackupMode, BackupRecord, DiskTransferRecord, VmConfiguration,
} from './manifest';
export { RepositoryError } from './errors';
export type { RepositoryErrorCode } from './errors';
export { parseShadowStorageSize, formatShadowStorageSize, DPM_MAX_POINTS } from './shadow-storage';
export type { ShadowStorageMaxSize, ShadowStorageSettings, ShadowStorageUsage } from './shadow-storage';
export { collectGarbage } from './gc';
export type { GcOptions, GcReport } from './gc';
export { verifyRepository } from './checker';
export type { VerifyOptions, VerifyReport, DamagedChunk, DamagedIndex, AffectedPoint } from './checker';
export { MAX_CHUNK_SIZE, ZERO_DIGEST, checkChunk, isAllZero, sha256 } from './chunk-store';
export { slotCount } from './fixed-index';
export { checkDataSourceId, checkDiskId, checkPointId, checkDigest, isDigest } from './ids';
export { EncryptionKey, ENCRYPTION_ALGORITHM } from './encryption';
export type { EncryptionConfig } from './encryption';
