// Public surface of the storage API: the server the protection server embeds, the client the
// agents and the CLI use, and the ingest helper for agents.
export { startStorageApi, buildStorageApi } from './server';
export type { StorageApi, StorageApiOptions } from './server';
export { StorageClient, StorageApiError } from './client';
export type { FixedIndexData, IndexPatch, PointRef } from './client';
export { TokenStore } from './tokens';
export type { TokenIdentity, TokenRecord, TokenRole } from './tokens';
export { ingestDisk, slotsOfRanges } from './ingest';
export type { DiskReader, IngestDiskOptions, IngestProgress, ByteRangeOfDisk } from './ingest';
export { loadClientTls, loadServerTls } from './tls';
export type { StorageClientTls, StorageServerTls } from './tls';
