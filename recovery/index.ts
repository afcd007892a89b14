export { repositoryChunkSource, storageApiChunkSource } from './chunk-source';
export type { ChunkSource, PointDiskIndex } from './chunk-source';
export { PointDiskReader, DEFAULT_CACHE_BYTES, MAX_READ_BYTES } from './point-disk-reader';
export type { ReaderStats } from './point-disk-reader';
export { openDiskWriter, restorePointDisk, RESTORE_IN_FLIGHT } from './restore-disk';
export type { DiskWriter, RestoreDiskProgress } from './restore-disk';
export { openDiskStream, describeDiskRead } from './raw-export';
export type { ByteRange, DiskStreamInfo } from './raw-export';
