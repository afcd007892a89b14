// The keys alone, safe to import from workflow code (no I/O, no proto bundle).
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

export const SA = {
  /** VM name (and id in BackupDataSource). */
  vm: defineSearchAttributeKey('BackupVm', SearchAttributeType.KEYWORD),
  /** Host the backup reads from (owner node at the step being run). */
  host: defineSearchAttributeKey('BackupHost', SearchAttributeType.KEYWORD),
  cluster: defineSearchAttributeKey('BackupCluster', SearchAttributeType.KEYWORD),
  /** online | offline */
  mode: defineSearchAttributeKey('BackupMode', SearchAttributeType.KEYWORD),
  /** initial-replica | express-full | consistency-check | restore */
  kind: defineSearchAttributeKey('BackupKind', SearchAttributeType.KEYWORD),
  dataSource: defineSearchAttributeKey('BackupDataSource', SearchAttributeType.KEYWORD),
  /** Id of the protection server that owns the data source (runs its jobs, keeps its chain). */
  server: defineSearchAttributeKey('BackupServer', SearchAttributeType.KEYWORD),
  /** A completed job's warning, for the Web UI's filters: retention-not-applied. */
  warning: defineSearchAttributeKey('BackupWarning', SearchAttributeType.KEYWORD),
} as const;

