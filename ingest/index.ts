// Public surface of the backup data path (README.md in this folder).
export { INGEST_DEFAULTS, ingestDisk, pool, uploadChunks } from './pipeline';
export type { IngestOptions, IngestPosition, IngestTuning } from './pipeline';
export { allSlots, mergeSlots, nonZeroSlots, slotCount, slotsOfRanges } from './geometry';
export type { ByteRange } from './geometry';
export { bufferDiskReader, openRawFileReader } from './raw-file-reader';
export { BatchMemory, batchMemory } from './batch-memory';
