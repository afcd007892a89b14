// Leases: what keeps a recovery point from being deleted while it is read, and what keeps two
// backups of one data source from running at once.
//   restore leases  leases/<leaseId>.json, with an expiry (a restore job holds one)
//   active reads    in memory: a stream reading a point right now
//   backup lease    <folder>/<dataSource>.json: the backup workflow that holds the data source
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeFileDurable } from './durable';
import { RepositoryError, isNotFound } from './errors';
import { checkDataSourceId, checkSessionId } from './ids';
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

export interface BackupLeaseHolder {
  dataSource: string;
  workflowId: string;
  runId: string;
  at: string;
}

/**
 * One backup of a data source at a time, whatever started it. A lease held by a workflow that no
 * longer runs (`holderRuns` asks Temporal) is taken over.
 */
export class BackupLeases {
  private readonly dsMutex = new KeyedMutex();

  constructor(
    private readonly dir: string,
    private readonly holderRuns: (holder: BackupLeaseHolder) => Promise<boolean>,
  ) {}

  private file(ds: string): string {
    return path.join(this.dir, `${checkDataSourceId(ds)}.json`);
  }

  async holder(ds: string): Promise<BackupLeaseHolder | undefined> {
    try {
      return JSON.parse(await fs.readFile(this.file(ds), 'utf8')) as BackupLeaseHolder;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Takes the lease for a workflow, or returns who holds it when another run still does. */
  async take(ds: string, workflowId: string, runId: string): Promise<{ taken: true } | { taken: false; holder: BackupLeaseHolder }> {
    // Check-then-write must not interleave for one data source, or two backups started in the
    // same instant would both win; one server process owns a data source.
    return this.dsMutex.run(ds, async () => {
      await fs.mkdir(this.dir, { recursive: true });
      const current = await this.holder(ds);
      if (current && current.workflowId !== workflowId && (await this.holderRuns(current))) return { taken: false as const, holder: current };
      const record: BackupLeaseHolder = { dataSource: ds, workflowId, runId, at: new Date().toISOString() };
      await writeFileDurable(this.file(ds), JSON.stringify(record));
      return { taken: true as const };
    });
  }

  async release(ds: string, workflowId: string): Promise<void> {
    await this.dsMutex.run(ds, async () => {
      const current = await this.holder(ds);
      if (current?.workflowId === workflowId) await fs.rm(this.file(ds), { force: true });
    });
  }
}
