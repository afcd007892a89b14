// Public surface of the storage API: the server the protection server embeds, the client the
// agents and the CLI use. The backup data path over it is ingest/.
export { startStorageApi, buildStorageApi } from './server';
export type { StorageApi, StorageApiOptions } from './server';
export { StorageClient, StorageApiError } from './client';
export type { FixedIndexData, IndexPatch, PointRef } from './client';
export { TokenStore } from './tokens';
export { GrantAuthority, GRANT_HEADER } from './grants';
export type { GrantClaims, BackupGrantClaims, RestoreGrantClaims } from './grants';
export type { TokenIdentity, TokenRecord, TokenRole } from './tokens';
export { loadClientTls, loadServerTls } from './tls';
export type { StorageClientTls, StorageServerTls } from './tls';
