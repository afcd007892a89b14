// The repository: a folder on the protection server's disk holding every recovery point of
// every protected disk. Layout and formats: README.md in this folder. This file opens it (config,
// lock, crash leftovers), keeps the data sources' shadow storage settings, and is the one surface
// callers use; each concept lives in its own file:
//   sessions.ts   backup sessions: staged index, patch, put, commit
//   points.ts     recovery points: list, read, write, delete
//   retention.ts  the pure plan of what to delete, and the step that deletes
//   leases.ts     restore leases, reads in progress, the backup lease
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { ChunkStore } from './chunk-store';
import { ChunkEncoder } from './encoder';
import { ENCRYPTION_ALGORITHM, EncryptionKey } from './encryption';
import type { EncryptionConfig } from './encryption';
import { TEMP_MARK, fsyncDir, writeFileDurable } from './durable';
import { RepositoryError, isNotFound } from './errors';
import { checkDataSourceId, isDataSourceId, isPointId } from './ids';
import { RepositoryLayout } from './layout';
import { DEFAULT_RESTORE_LEASE_TTL_MS, RestoreLeases } from './leases';
import type { RestoreLease } from './leases';
import { MANIFEST_FILE } from './manifest';
import type { RecoveryPointManifest } from './manifest';
import { KeyedMutex } from './mutex';
import { RecoveryPoints } from './points';
import type { DeletionReason, PointDeletion } from './points';
import { applyRetention } from './retention';
import type { RetentionInput } from './retention';
import { BackupSessions, DEFAULT_SESSION_TTL_MS, type SessionOwner } from './sessions';
import type { BackupSession, CommitPointInput, IndexCounters } from './sessions';
import {
  DEFAULT_SHADOW_STORAGE, checkRetention, formatShadowStorageSize, maxBytes, parseShadowStorageSize,
} from './shadow-storage';
import type { ShadowStorageMaxSize, ShadowStorageSettings, ShadowStorageUsage } from './shadow-storage';

export const REPOSITORY_FORMAT = 'hvprotect-repository/1';
/**
 * Default chunk size, chosen by bench/repository-ingest (see README "Chunk size"): 256 KiB keeps
 * the write amplification of scattered 64 KiB guest writes at 4x while an index stays at
 * 128 KiB per GiB of disk.
 */
export const DEFAULT_CHUNK_SIZE = 256 * 1024;
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_POINT_CHUNK_SIZE = 8 * 1024 * 1024;

export interface RepositoryConfig {
  format: typeof REPOSITORY_FORMAT;
  id: string;
  createdAt: string;
  defaultChunkSize: number;
  codec: 'zstd';
  /** Present when chunk payloads are sealed (AES-256-GCM); opening then needs the key. */
  encryption?: EncryptionConfig;
}

export interface DataSourceSettings {
  dataSource: string;
  chunkSize: number;
  shadowStorage: ShadowStorageSettings & { configured: boolean };
}

export interface OpenRepositoryOptions {
  /** Create the repository when the folder has none. */
  create?: boolean;
  defaultChunkSize?: number;
  logger?: Logger;
  /** Take the repository lock file (one owning process). Default true. */
  lock?: boolean;
  sessionTtlMs?: number;
  /** Size of the volume for percentage shadow storage limits; default statfs of the folder. */
  volumeBytes?: () => Promise<number>;
  /** Make the 4096 chunk folders when creating the repository (default true; tests skip it). */
  createChunkFolders?: boolean;
  /** Threads hashing and compressing uploaded chunks; 0 = on the event loop. Default: cores, max 4. */
  encoderThreads?: number;
  /**
   * Write new chunk files with O_DIRECT (past the page cache) where the file system supports it;
   * default true, or false when HVPROTECT_DIRECT_WRITES=0. Durability is the same either way
   * (the commit's syncfs).
   */
  directWrites?: boolean;
  /** Skip the syncfs before a manifest rename (tests on tmpfs). Default false. */
  unsafeSkipSync?: boolean;
  /**
   * The key chunks are sealed with (encryption.ts). A new repository records its fingerprint; an
   * encrypted repository refuses to open without it or with another key; an unencrypted one
   * given a key becomes encrypted from then on (chunks already stored stay as they are).
   */
  encryptionKey?: EncryptionKey;
  /** Largest virtual size a disk may claim in a session (default 64 TiB, VHDX's largest). */
  maxVirtualSize?: number;
}

function checkChunkSize(n: unknown): number {
  if (!Number.isInteger(n) || (n as number) < MIN_CHUNK_SIZE || (n as number) > MAX_POINT_CHUNK_SIZE || ((n as number) & ((n as number) - 1)) !== 0) {
    throw new RepositoryError('INVALID_ARGUMENT', `chunk size ${String(n)}`, `a power of two from ${MIN_CHUNK_SIZE} to ${MAX_POINT_CHUNK_SIZE} bytes`);
  }
  return n as number;
}

export class Repository {
  readonly chunks: ChunkStore;
  private readonly layout: RepositoryLayout;
  private readonly encoder: ChunkEncoder;
  /** One change at a time per data source: commits, deletions, settings. */
  private readonly dsMutex = new KeyedMutex();
  private readonly points: RecoveryPoints;
  private readonly sessions: BackupSessions;
  private readonly restoreLeases: RestoreLeases;
  private gcRunning = false;

  private constructor(
    readonly root: string,
    readonly config: RepositoryConfig,
    private readonly opts: OpenRepositoryOptions,
  ) {
    this.layout = new RepositoryLayout(root);
    this.encoder = new ChunkEncoder(opts.encoderThreads, opts.encryptionKey?.chunkKey, opts.directWrites ?? process.env.HVPROTECT_DIRECT_WRITES !== '0');
    this.chunks = new ChunkStore(root, this.encoder, opts.encryptionKey?.chunkKey, opts.unsafeSkipSync ? 0 : undefined);
    this.points = new RecoveryPoints(this.layout, this.chunks, opts.logger);
    this.restoreLeases = new RestoreLeases(this.layout, this.dsMutex, (ds, pointId) => this.points.get(ds, pointId));
    this.sessions = new BackupSessions({
      layout: this.layout,
      chunks: this.chunks,
      points: this.points,
      dsMutex: this.dsMutex,
      enforceRetention: (ds, incoming, reason) => this.enforceLocked(ds, incoming, reason),
      ttlMs: opts.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS,
      maxVirtualSize: opts.maxVirtualSize,
      skipSync: !!opts.unsafeSkipSync,
      logger: opts.logger,
    });
  }

  get logger(): Logger | undefined {
    return this.opts.logger;
  }

  static async open(root: string, opts: OpenRepositoryOptions = {}): Promise<Repository> {
    root = path.resolve(root);
    const layout = new RepositoryLayout(root);
    const configFile = layout.configFile;
    let config: RepositoryConfig;
    try {
      config = JSON.parse(await fs.readFile(configFile, 'utf8')) as RepositoryConfig;
    } catch (err) {
      if (!isNotFound(err)) throw new RepositoryError('CORRUPT', `${configFile}: ${(err as Error).message}`);
      if (!opts.create) {
        throw new RepositoryError('NOT_FOUND', `no repository at ${root}`, 'create one (open with create: true / `hvprotect server --init`)');
      }
      await fs.mkdir(root, { recursive: true });
      for (const d of ['chunks', 'datasources', 'sessions', 'leases']) await fs.mkdir(path.join(root, d), { recursive: true });
      if (opts.createChunkFolders !== false) await new ChunkStore(root).createFolders();
      config = {
        format: REPOSITORY_FORMAT,
        id: randomBytes(16).toString('hex'),
        createdAt: new Date().toISOString(),
        defaultChunkSize: checkChunkSize(opts.defaultChunkSize ?? DEFAULT_CHUNK_SIZE),
        codec: 'zstd',
        ...(opts.encryptionKey ? { encryption: { algorithm: ENCRYPTION_ALGORITHM, keyFingerprint: opts.encryptionKey.fingerprint } } : {}),
      };
      await writeFileDurable(configFile, JSON.stringify(config, null, 2) + '\n');
    }
    if (config.format !== REPOSITORY_FORMAT) {
      throw new RepositoryError('CORRUPT', `${configFile}: format ${String(config.format)}, expected ${REPOSITORY_FORMAT}`);
    }
    if (config.encryption) {
      if (!opts.encryptionKey) {
        throw new RepositoryError('INVALID_ARGUMENT', `repository ${root} is encrypted (${config.encryption.algorithm}, key ${config.encryption.keyFingerprint.slice(0, 16)}…) and no key was given`, 'give its key file: hvprotect server --encryption-key-file F');
      }
      if (opts.encryptionKey.fingerprint !== config.encryption.keyFingerprint) {
        throw new RepositoryError('INVALID_ARGUMENT', `wrong encryption key for repository ${root}: key ${opts.encryptionKey.fingerprint.slice(0, 16)}…, the repository was encrypted with key ${config.encryption.keyFingerprint.slice(0, 16)}…`, 'give the key file the repository was created with');
      }
    } else if (opts.encryptionKey) {
      // Encryption switched on for an existing repository: new chunks are sealed from now on.
      config = { ...config, encryption: { algorithm: ENCRYPTION_ALGORITHM, keyFingerprint: opts.encryptionKey.fingerprint } };
      await writeFileDurable(configFile, JSON.stringify(config, null, 2) + '\n');
      opts.logger?.warn({ repository: root }, 'repository encryption switched on: chunks stored before stay unencrypted until GC removes them');
    }
    const repo = new Repository(root, config, opts);
    if (opts.lock !== false) await repo.takeLock();
    await repo.cleanUpAfterCrash();
    return repo;
  }

  private async takeLock(): Promise<void> {
    const lockFile = this.layout.lockFile;
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await fs.writeFile(lockFile, `${process.pid}\n`, { flag: 'wx' });
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const pid = Number((await fs.readFile(lockFile, 'utf8').catch(() => '')).trim());
      let alive = false;
      if (pid > 0 && pid !== process.pid) {
        try {
          process.kill(pid, 0);
          alive = true;
        } catch {
          alive = false;
        }
      }
      if (alive) throw new RepositoryError('LOCKED', `repository ${this.root} is in use by process ${pid}`, 'stop that process, or use the storage API it serves');
      await fs.rm(lockFile, { force: true });
    }
  }

  /** Stops the encoder threads and releases the lock file. */
  async close(): Promise<void> {
    await this.encoder.close();
    if (this.opts.lock === false) return;
    const lockFile = this.layout.lockFile;
    const pid = Number((await fs.readFile(lockFile, 'utf8').catch(() => '')).trim());
    if (pid === process.pid) await fs.rm(lockFile, { force: true });
  }

  /** Point folders without a manifest and temp files are leftovers of an interrupted write. */
  private async cleanUpAfterCrash(): Promise<void> {
    for (const ds of await this.listDataSources()) {
      const dsDir = this.layout.dataSourceDir(ds);
      for (const name of await fs.readdir(dsDir)) {
        if (name.includes(TEMP_MARK)) await fs.rm(path.join(dsDir, name), { force: true });
      }
      const pointsDir = this.layout.pointsDir(ds);
      for (const name of await fs.readdir(pointsDir).catch(() => [] as string[])) {
        const dir = path.join(pointsDir, name);
        if (name.includes(TEMP_MARK) || !isPointId(name)) {
          this.logger?.warn({ dir }, 'removing leftover of an interrupted point write');
          await fs.rm(dir, { recursive: true, force: true });
          continue;
        }
        const hasManifest = await fs.stat(path.join(dir, MANIFEST_FILE)).then(() => true, () => false);
        if (!hasManifest) {
          this.logger?.warn({ dir }, 'removing point folder without manifest (interrupted commit or delete)');
          await fs.rm(dir, { recursive: true, force: true });
        } else {
          for (const f of await fs.readdir(dir)) if (f.includes(TEMP_MARK)) await fs.rm(path.join(dir, f), { force: true });
        }
      }
    }
    await this.removeExpired();
  }

  /** Removes expired sessions and restore leases (GC and open call this). */
  async removeExpired(): Promise<void> {
    for (const dir of [this.layout.sessionsDir, this.layout.restoreLeasesDir]) {
      for (const n of await fs.readdir(dir).catch(() => [] as string[])) {
        const file = dir === this.layout.sessionsDir ? path.join(dir, n, 'session.json') : path.join(dir, n);
        try {
          const o = JSON.parse(await fs.readFile(file, 'utf8')) as { expiresAt: string };
          if (Date.parse(o.expiresAt) >= Date.now()) continue;
        } catch {
          // unreadable or half-created: remove only when older than a minute
          const st = await fs.stat(path.join(dir, n)).catch(() => undefined);
          if (st && Date.now() - st.mtimeMs < 60_000) continue;
        }
        await fs.rm(path.join(dir, n), { recursive: true, force: true });
        if (dir === this.layout.sessionsDir) this.sessions.forget(n);
      }
    }
  }

  indexPath(ds: string, pointId: string, diskId: string): string {
    return this.layout.indexFile(ds, pointId, diskId);
  }

  // ---- data sources and shadow storage ------------------------------------------------

  async listDataSources(): Promise<string[]> {
    const names = await fs.readdir(this.layout.dataSourcesDir).catch((err) => {
      if (isNotFound(err)) return [] as string[];
      throw err;
    });
    return names.filter((n) => isDataSourceId(n)).sort();
  }

  /** Creates the data source's folder and settings when missing; returns its settings. */
  async ensureDataSource(ds: string, opts: { chunkSize?: number } = {}): Promise<DataSourceSettings> {
    checkDataSourceId(ds);
    return this.dsMutex.run(ds, async () => {
      const existing = await this.readSettings(ds);
      if (existing) return existing;
      const settings: DataSourceSettings = {
        dataSource: ds,
        chunkSize: checkChunkSize(opts.chunkSize ?? this.config.defaultChunkSize),
        shadowStorage: { ...DEFAULT_SHADOW_STORAGE, configured: false },
      };
      await fs.mkdir(this.layout.pointsDir(ds), { recursive: true });
      await fsyncDir(this.layout.dataSourcesDir);
      await this.writeSettings(settings);
      return settings;
    });
  }

  private async readSettings(ds: string): Promise<DataSourceSettings | undefined> {
    try {
      return JSON.parse(await fs.readFile(this.layout.settingsFile(ds), 'utf8')) as DataSourceSettings;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  private writeSettings(s: DataSourceSettings): Promise<void> {
    return writeFileDurable(this.layout.settingsFile(s.dataSource), JSON.stringify(s, null, 2) + '\n');
  }

  async getSettings(ds: string): Promise<DataSourceSettings> {
    const s = await this.readSettings(ds);
    if (!s) throw new RepositoryError('NOT_FOUND', `unknown data source ${ds}`, 'protect it first (a first backup session creates it)');
    return s;
  }

  /** vssadmin add shadowstorage: no size means UNBOUNDED; refuses when one is configured. */
  async addShadowStorage(ds: string, maxSize?: string | ShadowStorageMaxSize): Promise<ShadowStorageUsage> {
    const parsed = typeof maxSize === 'string' ? parseShadowStorageSize(maxSize) : maxSize ?? { kind: 'unbounded' as const };
    await this.ensureDataSource(ds);
    await this.dsMutex.run(ds, async () => {
      const s = await this.getSettings(ds);
      if (s.shadowStorage.configured) {
        throw new RepositoryError('CONFLICT', `shadow storage of ${ds} already exists (maximum ${formatShadowStorageSize(s.shadowStorage.maxSize)})`, 'use resize to change it');
      }
      s.shadowStorage = { ...s.shadowStorage, maxSize: parsed, configured: true };
      await this.writeSettings(s);
    });
    return this.resizeShadowStorage(ds, {});
  }

  /** vssadmin resize shadowstorage (and the retention settings); may delete the oldest points. */
  async resizeShadowStorage(
    ds: string,
    change: { maxSize?: string | ShadowStorageMaxSize; maxPoints?: number; retentionRangeDays?: number | null },
  ): Promise<ShadowStorageUsage & { deleted: PointDeletion[] }> {
    const deleted = await this.dsMutex.run(ds, async () => {
      const s = await this.getSettings(ds);
      if (change.maxSize !== undefined) {
        s.shadowStorage.maxSize = typeof change.maxSize === 'string' ? parseShadowStorageSize(change.maxSize) : change.maxSize;
        s.shadowStorage.configured = true;
      }
      if (change.maxPoints !== undefined) s.shadowStorage.maxPoints = change.maxPoints;
      if (change.retentionRangeDays !== undefined) {
        s.shadowStorage.retentionRangeDays = change.retentionRangeDays === null ? undefined : change.retentionRangeDays;
      }
      checkRetention(s.shadowStorage.maxPoints, s.shadowStorage.retentionRangeDays);
      await this.writeSettings(s);
      return this.enforceLocked(ds, 0, 'shadow-storage-resize');
    });
    return { ...(await this.usage(ds)), deleted };
  }

  /** vssadmin list shadowstorage: used, allocated and maximum bytes per data source. */
  async listShadowStorage(ds?: string): Promise<ShadowStorageUsage[]> {
    const all = ds ? [ds] : await this.listDataSources();
    return Promise.all(all.map((d) => this.usage(d)));
  }

  private async volumeBytes(): Promise<number> {
    if (this.opts.volumeBytes) return this.opts.volumeBytes();
    const st = await fs.statfs(this.root);
    return st.blocks * st.bsize;
  }

  async usage(ds: string): Promise<ShadowStorageUsage> {
    const s = await this.getSettings(ds);
    const points = await this.listPoints(ds);
    const used = points.reduce((a, p) => a + p.ownedBytes, 0);
    const inFlight = await this.sessions.inFlightBytes(ds);
    const max = maxBytes(s.shadowStorage.maxSize, await this.volumeBytes());
    return {
      dataSource: ds,
      usedBytes: used,
      allocatedBytes: used + inFlight,
      maximumBytes: Number.isFinite(max) ? max : null,
      maxSize: formatShadowStorageSize(s.shadowStorage.maxSize),
      points: points.length,
      maxPoints: s.shadowStorage.maxPoints,
      retentionRangeDays: s.shadowStorage.retentionRangeDays,
    };
  }

  /** vssadmin delete shadows /oldest. */
  async deleteOldestPoint(ds: string): Promise<PointDeletion> {
    return this.dsMutex.run(ds, async () => {
      const candidates = await this.deletablePoints(ds);
      if (candidates.length === 0) {
        throw new RepositoryError('CONFLICT', `no recovery point of ${ds} can be deleted`, 'the newest point and points being restored or used as a backup base are kept');
      }
      return this.points.delete(ds, candidates[0], 'delete-oldest');
    });
  }

  /** Deletes one point (not the newest, not one in use). */
  async deletePoint(ds: string, pointId: string): Promise<PointDeletion> {
    return this.dsMutex.run(ds, async () => {
      if (!(await this.deletablePoints(ds)).includes(pointId)) {
        await this.points.get(ds, pointId);
        throw new RepositoryError('CONFLICT', `recovery point ${ds}/${pointId} is in use or the newest`, 'wait for the restore or backup to finish; the newest point is always kept');
      }
      return this.points.delete(ds, pointId, 'requested');
    });
  }

  /** Retention range and maximum count (the server's enforceRetention activity). */
  async enforceRetention(ds: string): Promise<PointDeletion[]> {
    return this.dsMutex.run(ds, () => this.enforceLocked(ds, 0, 'retention-range'));
  }

  /** Points held by a restore lease, a read in progress or a live session's base. */
  private async pinnedPoints(ds: string): Promise<Set<string>> {
    const [leased, based] = await Promise.all([this.restoreLeases.pinned(ds), this.sessions.pinned(ds)]);
    for (const p of based) leased.add(p);
    return leased;
  }

  /** Oldest first; never the newest, never a pinned one. */
  private async deletablePoints(ds: string): Promise<string[]> {
    const points = await this.points.list(ds);
    const pinned = await this.pinnedPoints(ds);
    return points.slice(0, -1).map((p) => p.pointId).filter((p) => !pinned.has(p));
  }

  /** What retention decides from: the points, settings and pins as they are now. */
  private async retentionInput(ds: string, incomingBytes: number, sizeReason: DeletionReason): Promise<RetentionInput> {
    const s = await this.getSettings(ds);
    return {
      dataSource: ds,
      points: await this.points.list(ds),
      pinned: await this.pinnedPoints(ds),
      maxPoints: s.shadowStorage.maxPoints,
      retentionRangeDays: s.shadowStorage.retentionRangeDays,
      maxBytes: maxBytes(s.shadowStorage.maxSize, await this.volumeBytes()),
      incomingBytes,
      sizeReason,
      now: Date.now(),
    };
  }

  /** Deletes what retention plans, with `incomingBytes` more to fit; the caller holds the lock. */
  private enforceLocked(ds: string, incomingBytes: number, sizeReason: DeletionReason): Promise<PointDeletion[]> {
    return applyRetention(() => this.retentionInput(ds, incomingBytes, sizeReason), (pointId, reason) => this.points.delete(ds, pointId, reason));
  }

  readDeletionLog(): Promise<PointDeletion[]> {
    return this.points.readDeletionLog();
  }

  // ---- recovery points ----------------------------------------------------------------

  /** Committed points of a data source, oldest first. */
  listPoints(ds: string): Promise<RecoveryPointManifest[]> {
    return this.points.list(ds);
  }

  getPoint(ds: string, pointId: string): Promise<RecoveryPointManifest> {
    return this.points.get(ds, pointId);
  }

  // ---- backup sessions (the GC lease) ------------------------------------------------

  /** Opens a backup session (sessions.ts); creates the data source when it is new. */
  /** `owner`: the backup workflow run; the session id follows from it, so a retried plan gets the same session. */
  async beginSession(ds: string, opts: { basePoint?: string; chunkSize?: number; owner?: SessionOwner } = {}): Promise<BackupSession> {
    const settings = await this.ensureDataSource(ds, { chunkSize: opts.chunkSize });
    return this.sessions.begin(ds, settings.chunkSize, opts.basePoint, opts.owner);
  }

  /** Another session TTL from now, for a session whose owner still runs (the server's session keeper). */
  keepSessionAlive(sessionId: string): Promise<void> {
    return this.sessions.keepAlive(sessionId);
  }

  getSession(sessionId: string): Promise<BackupSession> {
    return this.sessions.get(sessionId);
  }

  listSessions(): Promise<BackupSession[]> {
    return this.sessions.list();
  }

  abortSession(sessionId: string): Promise<void> {
    return this.sessions.abort(sessionId);
  }

  patchIndex(sessionId: string, diskId: string, opts: { virtualSize: number; basePoint?: string | null }, slots: number[], digests: Buffer): Promise<IndexCounters> {
    return this.sessions.patchIndex(sessionId, diskId, opts, slots, digests);
  }

  putFullIndex(sessionId: string, diskId: string, virtualSize: number, digests: Buffer): Promise<IndexCounters> {
    return this.sessions.putFullIndex(sessionId, diskId, virtualSize, digests);
  }

  commitPoint(sessionId: string, input: CommitPointInput): Promise<RecoveryPointManifest> {
    return this.sessions.commit(sessionId, input);
  }

  // ---- restore leases -------------------------------------------------------------------

  beginRestore(ds: string, pointId: string, ttlMs = DEFAULT_RESTORE_LEASE_TTL_MS): Promise<RestoreLease> {
    return this.restoreLeases.begin(ds, pointId, ttlMs);
  }

  endRestore(leaseId: string): Promise<void> {
    return this.restoreLeases.end(leaseId);
  }

  hasRestoreLease(leaseId: string, ds: string, pointId: string): Promise<boolean> {
    return this.restoreLeases.has(leaseId, ds, pointId);
  }

  listRestoreLeases(): Promise<RestoreLease[]> {
    return this.restoreLeases.list();
  }

  withPointRead<T>(ds: string, pointId: string, fn: () => Promise<T>): Promise<T> {
    return this.restoreLeases.withPointRead(ds, pointId, fn);
  }

  // ---- GC coordination ------------------------------------------------------------------

  /** Runs fn as the only GC of this process. */
  async exclusiveGc<T>(fn: () => Promise<T>): Promise<T> {
    if (this.gcRunning) throw new RepositoryError('CONFLICT', 'garbage collection is already running', 'wait for it to finish');
    this.gcRunning = true;
    this.chunks.beginGc();
    try {
      return await fn();
    } finally {
      this.chunks.endGc();
      this.gcRunning = false;
    }
  }

  /** Every index file of every committed point and of every live session. */
  async listIndexFiles(): Promise<Array<{ file: string; dataSource: string; pointId?: string; sessionId?: string; diskId: string }>> {
    const out: Array<{ file: string; dataSource: string; pointId?: string; sessionId?: string; diskId: string }> = [];
    for (const ds of await this.listDataSources()) {
      for (const p of await this.points.list(ds)) {
        for (const d of p.disks) out.push({ file: this.layout.indexFile(ds, p.pointId, d.diskId), dataSource: ds, pointId: p.pointId, diskId: d.diskId });
      }
    }
    out.push(...(await this.sessions.stagedIndexFiles()));
    return out;
  }
}
