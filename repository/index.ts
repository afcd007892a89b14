// Public surface of the repository library.
export { Repository, KeyedMutex, DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE, MAX_POINT_CHUNK_SIZE, REPOSITORY_FORMAT } from './repository';
export type {
  BackupSession, CommitPointInput, DataSourceSettings, OpenRepositoryOptions, PointDeletion, RepositoryConfig, RestoreLease,
} from './repository';
export type { RecoveryPointManifest, RecoveryPointDisk, RecoveryPointKind, BackupMode } from './manifest';
export { RepositoryError } from './errors';
export type { RepositoryErrorCode } from './errors';
export { parseShadowStorageSize, formatShadowStorageSize, DPM_MAX_POINTS } from './shadow-storage';
export type { ShadowStorageMaxSize, ShadowStorageSettings, ShadowStorageUsage } from './shadow-storage';
export { collectGarbage } from './gc';
export type { GcOptions, GcReport } from './gc';
export { verifyRepository } from './checker';
export type { VerifyOptions, VerifyReport, DamagedChunk, DamagedIndex, AffectedPoint } from './checker';
export { openDiskStream, describeDiskRead } from './restore';
export type { ByteRange, DiskStreamInfo } from './restore';
export { MAX_CHUNK_SIZE, ZERO_DIGEST, checkChunk, isAllZero, sha256 } from './chunk-store';
export { slotCount } from './fixed-index';
export { checkDataSourceId, checkDiskId, checkPointId, checkDigest, isDigest } from './ids';
export { EncryptionKey, ENCRYPTION_ALGORITHM } from './encryption';
export type { EncryptionConfig } from './encryption';
