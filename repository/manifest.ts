// Recovery point manifest: "manifest.json" in the point's folder. Its rename into place is the
// commit: a point folder without a manifest does not exist (it is cleaned up on open).
//
// Format hvprotect-point/2 (JSON): format, dataSource, pointId, createdAt (checkpoint time),
// committedAt, kind, mode, basePoint?, disks[], ownedBytes, and three sections:
//   backup       how the point was made: workflow id, change-tracking id per disk (the base of
//                the next express full), the reasons for the mode, downtime, per-disk transfer
//   vm           the VM's configuration, what a restore needs to rebuild it
//   annotations  a free area for facts no reader of the repository relies on (kept as given)
// Manifests of format hvprotect-point/1 kept all of these in one free-form `vm` object; they are
// read into the same shape (readManifest) and never written again.
import { promises as fs } from 'node:fs';
import { RepositoryError } from './errors';

export const MANIFEST_FORMAT = 'hvprotect-point/2';
const LEGACY_MANIFEST_FORMAT = 'hvprotect-point/1';
export const MANIFEST_FILE = 'manifest.json';

export type RecoveryPointKind = 'initial-replica' | 'express-full' | 'consistency-check';
export type BackupMode = 'online' | 'offline';

export interface RecoveryPointDisk {
  diskId: string;
  /** The disk's file name on the host (e.g. "web01-os.vhdx"), for restore. */
  fileName: string;
  virtualSize: number;
  chunkSize: number;
  /** SHA-256 of the index's slot area, as in the index header. */
  indexDigest: string;
  /** Slots whose digest differs from the base point (all non-zero slots for a first point). */
  changedChunks: number;
  totalChunks: number;
  /** Bytes of chunk files this point added (stored size), the shadow storage accounting. */
  addedBytes: number;
}

/** What one disk's transfer did, as the agent reported it. */
export interface DiskTransferRecord {
  diskId: string;
  kind: RecoveryPointKind;
  /** Why an express full of this disk became a consistency check. */
  fallbackReason?: string;
  bytesRead: number;
  bytesSent: number;
  changedChunks: number;
  durationMs: number;
}

/** How the point was made. */
export interface BackupRecord {
  /** The backup workflow that committed it (a retried commit finds its point by this). */
  workflowId?: string;
  /** Change-tracking (RCT) id per disk at the checkpoint: the base of the next express full. */
  changeTracking: Record<string, string>;
  /** Every reason the mode was chosen (online needs all of its conditions). */
  modeReasons: string[];
  /** How long the VM was unavailable for an offline backup. */
  downtimeMs?: number;
  /** The consistency the checkpoint achieved, and why when less than asked (absent: not known). */
  consistency?: { achieved: 'application-consistent' | 'crash-consistent'; reason?: string };
  transfer: DiskTransferRecord[];
}

/** The VM as a restore needs it. */
export interface VmConfiguration {
  vmId?: string;
  name?: string;
  host?: string;
  cluster?: string;
  configPath?: string;
  /** The hypervisor's configuration of the VM (processors, memory, disks, network). */
  config?: Record<string, unknown>;
}

export interface RecoveryPointManifest {
  format: typeof MANIFEST_FORMAT;
  dataSource: string;
  pointId: string;
  /** ISO time the snapshot (checkpoint) was taken. */
  createdAt: string;
  /** ISO time the point was committed. */
  committedAt: string;
  kind: RecoveryPointKind;
  mode: BackupMode;
  basePoint?: string;
  disks: RecoveryPointDisk[];
  backup: BackupRecord;
  vm: VmConfiguration;
  /** Free area: kept as given, read by nothing in the repository. */
  annotations: Record<string, unknown>;
  /**
   * Bytes this point holds in shadow storage: its index files plus the chunks it added and the
   * ones it inherited from deleted older points. Rewritten when an older point is deleted.
   */
  ownedBytes: number;
}

const KINDS: RecoveryPointKind[] = ['initial-replica', 'express-full', 'consistency-check'];
const MODES: BackupMode[] = ['online', 'offline'];
export const isKind = (v: unknown): v is RecoveryPointKind => KINDS.includes(v as RecoveryPointKind);
export const isMode = (v: unknown): v is BackupMode => MODES.includes(v as BackupMode);

export const EMPTY_BACKUP_RECORD: BackupRecord = { changeTracking: {}, modeReasons: [], transfer: [] };

/** A manifest is a few kB; a larger file is damage, and is not read into memory. */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;
const DISK_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const isCount = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const optional = (v: unknown, test: (x: unknown) => boolean): boolean => v === undefined || test(v);
const isString = (v: unknown): boolean => typeof v === 'string';

/** A plain JSON object (not an array) no deeper than `maxDepth`. */
export function isPlainJsonObject(v: unknown, maxDepth = 32): v is Record<string, unknown> {
  const walk = (x: unknown, depth: number): boolean => {
    if (typeof x !== 'object' || x === null) return true;
    if (depth > maxDepth) return false;
    for (const k of Object.keys(x)) if (!walk((x as Record<string, unknown>)[k], depth + 1)) return false;
    return true;
  };
  return isObject(v) && walk(v, 1);
}

/** What is wrong with a backup record, or undefined. */
export function backupRecordProblem(b: unknown): string | undefined {
  if (!isObject(b)) return 'backup is not an object';
  if (!optional(b.workflowId, isString)) return 'backup.workflowId is not a string';
  if (!isObject(b.changeTracking) || !Object.values(b.changeTracking).every(isString)) return 'backup.changeTracking is not a map of disk id to change-tracking id';
  if (!Array.isArray(b.modeReasons) || !b.modeReasons.every(isString)) return 'backup.modeReasons is not a list of strings';
  if (!optional(b.downtimeMs, (v) => typeof v === 'number' && v >= 0)) return 'backup.downtimeMs is not a duration';
  const consistent = (c: unknown) => isObject(c) && (c.achieved === 'application-consistent' || c.achieved === 'crash-consistent') && optional(c.reason, isString);
  if (!optional(b.consistency, consistent)) return 'backup.consistency is not { achieved: application-consistent | crash-consistent, reason? }';
  if (!Array.isArray(b.transfer)) return 'backup.transfer is not a list';
  for (const t of b.transfer as unknown[]) {
    if (!isObject(t) || typeof t.diskId !== 'string' || !isKind(t.kind) || !optional(t.fallbackReason, isString)) return 'a backup.transfer entry is not { diskId, kind, ... }';
    if (![t.bytesRead, t.bytesSent, t.changedChunks, t.durationMs].every((n) => typeof n === 'number' && n >= 0)) return `backup.transfer of ${t.diskId}: invalid counts`;
  }
  return undefined;
}

/** What is wrong with a VM configuration, or undefined. */
export function vmConfigurationProblem(v: unknown): string | undefined {
  if (!isObject(v)) return 'vm is not an object';
  for (const k of ['vmId', 'name', 'host', 'cluster', 'configPath'] as const) if (!optional(v[k], isString)) return `vm.${k} is not a string`;
  if (!optional(v.config, (c) => isPlainJsonObject(c, 32))) return 'vm.config is not a JSON object of at most 32 levels';
  return undefined;
}

/** What is wrong with a parsed manifest's shape, or undefined when every field can be used. */
function manifestProblem(m: Record<string, unknown>): string | undefined {
  if (m.format !== MANIFEST_FORMAT || typeof m.pointId !== 'string' || typeof m.dataSource !== 'string') return `not a ${MANIFEST_FORMAT} manifest`;
  if (!Array.isArray(m.disks) || m.disks.length > 4096) return 'disks is not a list of disks';
  for (const x of m.disks as unknown[]) {
    if (!isObject(x)) return 'a disk entry is not an object';
    if (typeof x.diskId !== 'string' || !DISK_ID.test(x.diskId) || x.diskId.includes('..')) return `invalid disk id ${JSON.stringify(x.diskId)?.slice(0, 80)}`;
    if (!isCount(x.virtualSize) || !((x.virtualSize as number) > 0) || !isCount(x.chunkSize) || !((x.chunkSize as number) > 0) || (x.chunkSize as number) > 0xffffffff) return `disk ${x.diskId}: invalid virtual size or chunk size`;
    if (typeof x.indexDigest !== 'string' || !HEX64.test(x.indexDigest)) return `disk ${x.diskId}: invalid index digest`;
    if (!isCount(x.changedChunks) || !isCount(x.totalChunks) || !isCount(x.addedBytes)) return `disk ${x.diskId}: invalid counts`;
  }
  if (!isCount(m.ownedBytes)) return 'invalid ownedBytes';
  const problem = backupRecordProblem(m.backup) ?? vmConfigurationProblem(m.vm);
  if (problem) return problem;
  if (!isPlainJsonObject(m.annotations, 64)) return 'annotations is not a JSON object of at most 64 levels';
  return undefined;
}

const VM_FIELDS = ['vmId', 'name', 'host', 'cluster', 'configPath', 'config'];
const BACKUP_FIELDS = ['workflowId', 'changeTracking', 'modeReasons', 'downtimeMs', 'consistency', 'transfer'];

/** A hvprotect-point/1 manifest in today's shape: its free-form `vm` split into the three sections. */
function fromLegacy(m: Record<string, unknown>): Record<string, unknown> {
  const old = isPlainJsonObject(m.vm, 64) ? m.vm : {};
  const pick = (keys: string[]) => Object.fromEntries(Object.entries(old).filter(([k]) => keys.includes(k)));
  const backup = { ...EMPTY_BACKUP_RECORD, ...pick(BACKUP_FIELDS) };
  const annotations = Object.fromEntries(Object.entries(old).filter(([k]) => !VM_FIELDS.includes(k) && !BACKUP_FIELDS.includes(k)));
  return { ...m, format: MANIFEST_FORMAT, backup, vm: pick(VM_FIELDS), annotations };
}

export async function readManifest(file: string): Promise<RecoveryPointManifest> {
  const st = await fs.stat(file);
  if (st.size > MAX_MANIFEST_BYTES) throw new RepositoryError('CORRUPT', `manifest ${file}: ${st.size} bytes, more than a manifest can be (${MAX_MANIFEST_BYTES})`, 'run verify; delete this recovery point');
  const text = await fs.readFile(file, 'utf8');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new RepositoryError('CORRUPT', `manifest ${file}: not JSON (${(err as Error).message})`);
  }
  if (!isObject(parsed)) throw new RepositoryError('CORRUPT', `manifest ${file}: not a JSON object`, 'run verify; restore from another recovery point');
  const m = parsed.format === LEGACY_MANIFEST_FORMAT ? fromLegacy(parsed) : parsed;
  const problem = manifestProblem(m);
  if (problem) throw new RepositoryError('CORRUPT', `manifest ${file}: ${problem}`, 'run verify; restore from another recovery point');
  return m as unknown as RecoveryPointManifest;
}

export function manifestText(m: RecoveryPointManifest): string {
  return JSON.stringify(m, null, 2) + '\n';
}
