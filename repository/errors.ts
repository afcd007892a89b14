// One error type for the repository; `code` is what callers branch on (the storage API maps it
// to an HTTP status), `hint` says what to do about it.
export type RepositoryErrorCode =
  | 'INVALID_ARGUMENT' // a malformed id, digest, size or body: fix the caller
  | 'NOT_FOUND' // unknown data source, point, disk, session or chunk
  | 'CONFLICT' // the state does not allow it (missing chunks, point leased, session closed)
  | 'SHADOW_STORAGE_FULL' // the point does not fit the data source's shadow storage limit
  | 'CORRUPT' // on-disk data failed a check (magic, length, checksum, digest)
  | 'LOCKED'; // another process owns the repository

export class RepositoryError extends Error {
  override readonly name = 'RepositoryError';
  constructor(
    readonly code: RepositoryErrorCode,
    message: string,
    readonly hint?: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
  }
}

export function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}
