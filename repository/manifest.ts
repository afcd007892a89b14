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

export async function readManifest(file: string): Promise<RecoveryPointManifest> {
  const text = await fs.readFile(file, 'utf8');
  let m: RecoveryPointManifest;
  try {
    m = JSON.parse(text) as RecoveryPointManifest;
  } catch (err) {
    throw new RepositoryError('CORRUPT', `manifest ${file}: not JSON (${(err as Error).message})`);
  }
  if (m.format !== MANIFEST_FORMAT || !Array.isArray(m.disks) || typeof m.pointId !== 'string') {
    throw new RepositoryError('CORRUPT', `manifest ${file}: not a ${MANIFEST_FORMAT} manifest`);
  }
  return m;
}
