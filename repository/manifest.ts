// Recovery point manifest: "manifest.json" in the point's folder. Its rename into place is the
// commit: a point folder without a manifest does not exist (it is cleaned up on open).
import { promises as fs } from 'node:fs';
import { RepositoryError } from './errors';

export const MANIFEST_FORMAT = 'hvprotect-point/1';
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
  /** VM configuration for restore; free-form, kept as given. */
  vm: Record<string, unknown>;
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

/** A manifest is a few kB; a larger file is damage, and is not read into memory. */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;
const DISK_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const isCount = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;

function depthAtMost(v: unknown, max: number): boolean {
  if (typeof v !== 'object' || v === null) return true;
  if (max <= 0) return false;
  for (const k of Object.keys(v)) if (!depthAtMost((v as Record<string, unknown>)[k], max - 1)) return false;
  return true;
}

/** What is wrong with a parsed manifest's shape, or undefined when every field can be used. */
function manifestProblem(m: Partial<RecoveryPointManifest> | null): string | undefined {
  if (typeof m !== 'object' || m === null || Array.isArray(m)) return 'not a JSON object';
  if (m.format !== MANIFEST_FORMAT || typeof m.pointId !== 'string' || typeof m.dataSource !== 'string') return `not a ${MANIFEST_FORMAT} manifest`;
  if (!Array.isArray(m.disks) || m.disks.length > 4096) return 'disks is not a list of disks';
  for (const d of m.disks as unknown[]) {
    const x = d as Partial<RecoveryPointDisk> | null;
    if (typeof x !== 'object' || x === null) return 'a disk entry is not an object';
    if (typeof x.diskId !== 'string' || !DISK_ID.test(x.diskId) || x.diskId.includes('..')) return `invalid disk id ${JSON.stringify(x.diskId)?.slice(0, 80)}`;
    if (!isCount(x.virtualSize) || !(x.virtualSize! > 0) || !isCount(x.chunkSize) || !(x.chunkSize! > 0) || x.chunkSize! > 0xffffffff) return `disk ${x.diskId}: invalid virtual size or chunk size`;
    if (typeof x.indexDigest !== 'string' || !HEX64.test(x.indexDigest)) return `disk ${x.diskId}: invalid index digest`;
    if (!isCount(x.changedChunks) || !isCount(x.totalChunks) || !isCount(x.addedBytes)) return `disk ${x.diskId}: invalid counts`;
  }
  if (!isCount(m.ownedBytes)) return 'invalid ownedBytes';
  if (m.vm !== undefined && !depthAtMost(m.vm, 64)) return 'vm nested too deeply';
  return undefined;
}

export async function readManifest(file: string): Promise<RecoveryPointManifest> {
  const st = await fs.stat(file);
  if (st.size > MAX_MANIFEST_BYTES) throw new RepositoryError('CORRUPT', `manifest ${file}: ${st.size} bytes, more than a manifest can be (${MAX_MANIFEST_BYTES})`, 'run verify; delete this recovery point');
  const text = await fs.readFile(file, 'utf8');
  let m: RecoveryPointManifest;
  try {
    m = JSON.parse(text) as RecoveryPointManifest;
  } catch (err) {
    throw new RepositoryError('CORRUPT', `manifest ${file}: not JSON (${(err as Error).message})`);
  }
  const problem = manifestProblem(m);
  if (problem) throw new RepositoryError('CORRUPT', `manifest ${file}: ${problem}`, 'run verify; restore from another recovery point');
  return m;
}
