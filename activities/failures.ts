// Failure types: the names activities raise (as non-retryable ApplicationFailures), workflows
// branch on, and the CLI explains. One list; safe to import from workflow code (constants only).

/** What a host agent raises. */
export const HostFailure = {
  /** The VM is not (or no longer) on this host: the workflow locates it again. */
  VmNotOnHost: 'VmNotOnHost',
  VmNotFound: 'VmNotFound',
  CheckpointNotFound: 'CheckpointNotFound',
  DiskDamaged: 'DiskDamaged',
  /** The hypervisor refused the request as given (bad config, a VM in the way); retrying will not help. */
  HypervisorRefused: 'HypervisorRefused',
  ChangeTrackingLost: 'ChangeTrackingLost',
  /** The agent holds no credential for the protection server that asks. */
  ServerNotTrusted: 'ServerNotTrusted',
  StorageRefused: 'StorageRefused',
  StorageUnavailable: 'StorageUnavailable',
  RecoveryPointDamaged: 'RecoveryPointDamaged',
  RepositoryFull: 'RepositoryFull',
  RestoreNotSupported: 'RestoreNotSupported',
} as const;

/** What a protection server's activities raise. */
export const ServerFailure = {
  ShadowStorageFull: 'ShadowStorageFull',
  /** More recovery points of a data source in the last hour than the server keeps. */
  TooManyPoints: 'TooManyPoints',
  UnknownDataSource: 'UnknownDataSource',
  UnknownRecoveryPoint: 'UnknownRecoveryPoint',
  RepositoryFull: 'RepositoryFull',
} as const;

/** What the workflows themselves decide. */
export const JobFailure = {
  /** A backup, check or original-place restore of the data source is already running. */
  JobAlreadyRunning: 'JobAlreadyRunning',
  /** The protection is moving to another server or being removed. */
  ProtectionChanging: 'ProtectionChanging',
  TooManyRelocations: 'TooManyRelocations',
  DiskSetChanged: 'DiskSetChanged',
  InvalidInput: 'InvalidInput',
} as const;

/** Host failures that retrying on the same host cannot fix. */
export const NON_RETRYABLE_HOST: string[] = [
  HostFailure.VmNotOnHost,
  HostFailure.VmNotFound,
  HostFailure.CheckpointNotFound,
  HostFailure.DiskDamaged,
  HostFailure.StorageRefused,
  HostFailure.ChangeTrackingLost,
  HostFailure.RepositoryFull,
  HostFailure.RecoveryPointDamaged,
  HostFailure.HypervisorRefused,
  HostFailure.ServerNotTrusted,
];

export const NON_RETRYABLE_SERVER: string[] = [ServerFailure.ShadowStorageFull, ServerFailure.TooManyPoints, ServerFailure.UnknownDataSource, ServerFailure.RepositoryFull];

/** The innermost message of a failure chain (the activity's own words); pure, for workflows too. */
export function innermostMessage(err: unknown): string {
  let e = err as { message?: string; cause?: unknown } | undefined;
  let msg = e?.message ?? String(err);
  for (let i = 0; i < 5 && e?.cause; i++) {
    e = e.cause as typeof e;
    if (e?.message) msg = e.message;
  }
  return msg;
}
