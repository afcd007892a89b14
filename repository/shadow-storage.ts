// Shadow storage settings of a data source, as vssadmin has them: a maximum size (bytes, a
// percentage of the repository volume, or UNBOUNDED), a cap on the number of recovery points
// (DPM: at most 448 per data source) and a retention range in days.
import { RepositoryError } from './errors';

export type ShadowStorageMaxSize =
  | { kind: 'unbounded' }
  | { kind: 'bytes'; bytes: number }
  | { kind: 'percent'; percent: number };

export interface ShadowStorageSettings {
  maxSize: ShadowStorageMaxSize;
  /** Keep points for this many days (the newest is always kept). */
  retentionRangeDays?: number;
  /** Keep at most this many points, 1..448. */
  maxPoints: number;
}

export const DPM_MAX_POINTS = 448;
export const DEFAULT_SHADOW_STORAGE: ShadowStorageSettings = { maxSize: { kind: 'unbounded' }, maxPoints: 64 };

const UNITS: Record<string, number> = {
  '': 1, B: 1,
  KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4, PB: 1024 ** 5, EB: 1024 ** 6,
  KIB: 1024, MIB: 1024 ** 2, GIB: 1024 ** 3, TIB: 1024 ** 4, PIB: 1024 ** 5, EIB: 1024 ** 6,
};

const ACCEPTED = 'accepted forms: a byte count ("1073741824"), a size with a unit KB MB GB TB PB EB (powers of 1024, as vssadmin; "20GB", "1.5TB"), a percentage of the repository volume ("15%"), or UNBOUNDED';

/** Parses vssadmin's /MaxSize forms: "20GB", "15%", "UNBOUNDED", "1073741824". */
export function parseShadowStorageSize(text: string): ShadowStorageMaxSize {
  const t = String(text).trim().toUpperCase();
  if (t === 'UNBOUNDED') return { kind: 'unbounded' };
  const pct = /^(\d+(?:\.\d+)?)\s*%$/.exec(t);
  if (pct) {
    const percent = Number(pct[1]);
    if (percent <= 0 || percent > 100) throw new RepositoryError('INVALID_ARGUMENT', `shadow storage size ${text}: a percentage is above 0 and at most 100`, ACCEPTED);
    return { kind: 'percent', percent };
  }
  const m = /^(\d+(?:\.\d+)?)\s*([A-Z]*)$/.exec(t);
  if (m && m[2] in UNITS) {
    const bytes = Math.floor(Number(m[1]) * UNITS[m[2]]);
    if (!Number.isSafeInteger(bytes)) throw new RepositoryError('INVALID_ARGUMENT', `shadow storage size ${text} is too large`, ACCEPTED);
    // vssadmin refuses a maximum below 320 MB; 1 MiB is our floor (tests use small limits).
    if (bytes < 1024 * 1024) throw new RepositoryError('INVALID_ARGUMENT', `shadow storage size ${text} is below 1 MB`, ACCEPTED);
    return { kind: 'bytes', bytes };
  }
  throw new RepositoryError('INVALID_ARGUMENT', `cannot read shadow storage size ${JSON.stringify(text)}`, ACCEPTED);
}

export function formatShadowStorageSize(s: ShadowStorageMaxSize): string {
  if (s.kind === 'unbounded') return 'UNBOUNDED';
  if (s.kind === 'percent') return `${s.percent}%`;
  return `${s.bytes}`;
}

/** The maximum in bytes given the repository volume's size; Infinity when unbounded. */
export function maxBytes(s: ShadowStorageMaxSize, volumeBytes: number): number {
  if (s.kind === 'unbounded') return Infinity;
  if (s.kind === 'percent') return Math.floor((volumeBytes * s.percent) / 100);
  return s.bytes;
}

export function checkRetention(maxPoints: unknown, retentionRangeDays: unknown): void {
  if (!Number.isInteger(maxPoints) || (maxPoints as number) < 1 || (maxPoints as number) > DPM_MAX_POINTS) {
    throw new RepositoryError('INVALID_ARGUMENT', `max points ${String(maxPoints)}`, `a whole number from 1 to ${DPM_MAX_POINTS} (DPM's limit per data source)`);
  }
  if (retentionRangeDays !== undefined && (!Number.isInteger(retentionRangeDays) || (retentionRangeDays as number) < 1 || (retentionRangeDays as number) > 3650)) {
    throw new RepositoryError('INVALID_ARGUMENT', `retention range ${String(retentionRangeDays)} days`, 'a whole number of days from 1 to 3650');
  }
}

export interface ShadowStorageUsage {
  dataSource: string;
  /** Bytes held by committed points. */
  usedBytes: number;
  /** Used plus bytes uploaded by backup sessions in progress. */
  allocatedBytes: number;
  /** Maximum in bytes; null when UNBOUNDED. */
  maximumBytes: number | null;
  maxSize: string;
  points: number;
  maxPoints: number;
  retentionRangeDays?: number;
}
