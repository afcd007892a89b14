export { readPartitionTable, GPT_TYPES } from './partitions';
export type { Partition, PartitionTable } from './partitions';
export { openVolumes, openFileSystem, lookup, walk, splitGuestPath } from './volume';
export type { Volume } from './volume';
export { GuestFsError } from './errors';
export { slice } from './types';
export type { GuestEntry, GuestFileSystem, RandomAccess, EntryType } from './types';
