// Leases: what keeps a recovery point from being deleted while it is read (one backup of a data
// source at a time is the protection workflow's, in Temporal).
//   restore leases  leases/<leaseId>.json, with an expiry (a restore job holds one)
//   active reads    in memory: a stream reading a point right now
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeFileDurable } from './durable';
import { RepositoryError } from './errors';
import { checkSessionId } from './ids';
import type { RepositoryLayout } from './layout';
import { KeyedMutex } from './mutex';

export const DEFAULT_RESTORE_LEASE_TTL_MS = 6 * 60 * 60 * 1000;

export interface RestoreLease {
  leaseId: string;
  dataSource: string;
  pointId: string;
  startedAt: string;
  expiresAt: string;
}

export class RestoreLeases {
  /** `${ds}/${pointId}` → streams reading it right now. */
  private readonly activeReads = new Map<string, number>();

  constructor(
    private readonly layout: RepositoryLayout,
    private readonly dsMutex: KeyedMutex,
    /** Throws NOT_FOUND for a point that does not exist. */
    private readonly checkPoint: (ds: string, pointId: string) => Promise<unknown>,
  ) {}

  /** A restore lease keeps a point from being deleted while a restore reads it. */
  async begin(ds: string, pointId: string, ttlMs = DEFAULT_RESTORE_LEASE_TTL_MS): Promise<RestoreLease> {
    if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0 || ttlMs > 365 * 86_400_000) {
      throw new RepositoryError('INVALID_ARGUMENT', `restore lease of ${String(ttlMs)} ms`, 'a lease time from 1 ms to a year');
    }
    await this.checkPoint(ds, pointId);
    const now = Date.now();
    const lease: RestoreLease = {
      leaseId: randomBytes(16).toString('hex'),
      dataSource: ds,
      pointId,
      startedAt: new Date(now).toISOString(),
      expiresAt: new Date(now + ttlMs).toISOString(),
    };
    await writeFileDurable(this.layout.restoreLeaseFile(lease.leaseId), JSON.stringify(lease) + '\n');
    return lease;
  }

  async end(leaseId: string): Promise<void> {
    checkSessionId(leaseId);
    await fs.rm(this.layout.restoreLeaseFile(leaseId), { force: true });
  }

  /** Live leases (expired ones are ignored and removed on open and by GC). */
  async list(): Promise<RestoreLease[]> {
    const dir = this.layout.restoreLeasesDir;
    const out: RestoreLease[] = [];
    for (const n of await fs.readdir(dir).catch(() => [] as string[])) {
      if (!n.endsWith('.json')) continue;
      try {
        const l = JSON.parse(await fs.readFile(path.join(dir, n), 'utf8')) as RestoreLease;
        if (Date.parse(l.expiresAt) >= Date.now()) out.push(l);
      } catch {
        // being written or removed
      }
    }
    return out;
  }

  /** Whether `leaseId` is a live lease on ds/pointId (a restore grant lives as long as its lease). */
  async has(leaseId: string, ds: string, pointId: string): Promise<boolean> {
    try {
      checkSessionId(leaseId);
      const l = JSON.parse(await fs.readFile(this.layout.restoreLeaseFile(leaseId), 'utf8')) as RestoreLease;
      return l.dataSource === ds && l.pointId === pointId && Date.parse(l.expiresAt) >= Date.now();
    } catch {
      return false;
    }
  }

  /** Holds an implicit lease for the duration of a read (used by the restore reader). */
  async withPointRead<T>(ds: string, pointId: string, fn: () => Promise<T>): Promise<T> {
    const key = `${ds}/${pointId}`;
    // Taken under the data source lock so no deletion is half way through.
    await this.dsMutex.run(ds, async () => {
      await this.checkPoint(ds, pointId);
      this.activeReads.set(key, (this.activeReads.get(key) ?? 0) + 1);
    });
    try {
      return await fn();
    } finally {
      const n = (this.activeReads.get(key) ?? 1) - 1;
      if (n <= 0) this.activeReads.delete(key);
      else this.activeReads.set(key, n);
    }
  }

  /** Points of a data source held by a restore lease or a read in progress. */
  async pinned(ds: string): Promise<Set<string>> {
    const busy = new Set<string>();
    for (const l of await this.list()) if (l.dataSource === ds) busy.add(l.pointId);
    for (const [key, n] of this.activeReads) if (n > 0 && key.startsWith(`${ds}/`)) busy.add(key.slice(ds.length + 1));
    return busy;
  }
}
