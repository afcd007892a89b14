// The repository: a folder on the protection server's disk holding every recovery point of
// every protected disk. Layout and formats: README.md in this folder.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { ChunkStore, ZERO_DIGEST } from './chunk-store';
import { ChunkEncoder } from './encoder';
import { ENCRYPTION_ALGORITHM, EncryptionKey } from './encryption';
import type { EncryptionConfig } from './encryption';
import { TEMP_MARK, appendLineDurable, tempNameFor, fsyncDir, syncFileSystem, writeFileDurable } from './durable';
import { RepositoryError, isNotFound } from './errors';
import { DIGEST_SIZE, INDEX_HEADER_SIZE, IndexBuilder, readIndexHeader, readSlots } from './fixed-index';
import { checkDataSourceId, checkDiskId, checkPointId, checkSessionId, isDataSourceId, isDiskId, isPointId, parsePointId, pointIdFor } from './ids';
import { MANIFEST_FILE, MANIFEST_FORMAT, isKind, isMode, readManifest } from './manifest';
import type { BackupMode, RecoveryPointKind, RecoveryPointManifest } from './manifest';
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
/** A backup session (the GC lease) lapses after this long without a call. */
export const DEFAULT_SESSION_TTL_MS = 6 * 60 * 60 * 1000;
export const DEFAULT_RESTORE_LEASE_TTL_MS = 6 * 60 * 60 * 1000;

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

export interface BackupSession {
  sessionId: string;
  dataSource: string;
  basePoint?: string;
  chunkSize: number;
  startedAt: string;
  expiresAt: string;
  disks: Record<string, { virtualSize: number; basePoint?: string; changedChunks: number; addedBytes: number }>;
}

export interface RestoreLease {
  leaseId: string;
  dataSource: string;
  pointId: string;
  startedAt: string;
  expiresAt: string;
}

export interface CommitPointInput {
  kind: RecoveryPointKind;
  mode: BackupMode;
  /** ISO time of the checkpoint; default now. */
  createdAt?: string;
  disks: Array<{ diskId: string; fileName: string; virtualSize: number }>;
  vm?: Record<string, unknown>;
}

export interface PointDeletion {
  time: string;
  dataSource: string;
  pointId: string;
  reason: 'shadow-storage-full' | 'shadow-storage-resize' | 'delete-oldest' | 'max-points' | 'retention-range' | 'requested';
  freedBytes: number;
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
}

/** Serialises async work per key (a data source, a session). */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>();
  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return next;
  }
}

function checkChunkSize(n: unknown): number {
  if (!Number.isInteger(n) || (n as number) < MIN_CHUNK_SIZE || (n as number) > MAX_POINT_CHUNK_SIZE || ((n as number) & ((n as number) - 1)) !== 0) {
    throw new RepositoryError('INVALID_ARGUMENT', `chunk size ${String(n)}`, `a power of two from ${MIN_CHUNK_SIZE} to ${MAX_POINT_CHUNK_SIZE} bytes`);
  }
  return n as number;
}

/** VHDX's largest disk, 64 TiB: a bigger claim would stage an index of terabytes. */
export const MAX_VIRTUAL_SIZE = 64 * 1024 ** 4;

/** A plain JSON object (not an array) no deeper than `maxDepth`: it can be written into a manifest. */
function isPlainJson(v: unknown, maxDepth = 32): boolean {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const walk = (x: unknown, depth: number): boolean => {
    if (typeof x !== 'object' || x === null) return true;
    if (depth > maxDepth) return false;
    for (const k of Object.keys(x)) if (!walk((x as Record<string, unknown>)[k], depth + 1)) return false;
    return true;
  };
  return walk(v, 1);
}

function checkVirtualSize(n: unknown): number {
  if (!Number.isSafeInteger(n) || (n as number) <= 0 || (n as number) > MAX_VIRTUAL_SIZE) {
    throw new RepositoryError('INVALID_ARGUMENT', `virtual size ${String(n)}`, `the disk size in bytes, a positive integer up to ${MAX_VIRTUAL_SIZE} (64 TiB)`);
  }
  return n as number;
}

export class Repository {
  readonly chunks: ChunkStore;
  private readonly encoder: ChunkEncoder;
  private readonly dsMutex = new KeyedMutex();
  private readonly sessionMutex = new KeyedMutex();
  /** Streams reading a point right now (restore leases held implicitly). */
  private readonly activeReads = new Map<string, number>();
  private gcRunning = false;

  private constructor(
    readonly root: string,
    readonly config: RepositoryConfig,
    private readonly opts: OpenRepositoryOptions,
  ) {
    this.encoder = new ChunkEncoder(opts.encoderThreads, opts.encryptionKey?.chunkKey, opts.directWrites ?? process.env.HVPROTECT_DIRECT_WRITES !== '0');
    this.chunks = new ChunkStore(root, this.encoder, opts.encryptionKey?.chunkKey, opts.unsafeSkipSync ? 0 : undefined);
  }

  get logger(): Logger | undefined {
    return this.opts.logger;
  }

  static async open(root: string, opts: OpenRepositoryOptions = {}): Promise<Repository> {
    root = path.resolve(root);
    const configFile = path.join(root, 'config');
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
    const lockFile = path.join(this.root, 'lock');
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
    const lockFile = path.join(this.root, 'lock');
    const pid = Number((await fs.readFile(lockFile, 'utf8').catch(() => '')).trim());
    if (pid === process.pid) await fs.rm(lockFile, { force: true });
  }

  /** Point folders without a manifest and temp files are leftovers of an interrupted write. */
  private async cleanUpAfterCrash(): Promise<void> {
    for (const ds of await this.listDataSources()) {
      const dsDir = this.dataSourceDir(ds);
      for (const name of await fs.readdir(dsDir)) {
        if (name.includes(TEMP_MARK)) await fs.rm(path.join(dsDir, name), { force: true });
      }
      const pointsDir = path.join(dsDir, 'points');
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
    await this.expireSessionsAndLeases();
  }

  // ---- paths --------------------------------------------------------------------------

  private dataSourceDir(ds: string): string {
    return path.join(this.root, 'datasources', checkDataSourceId(ds));
  }
  private pointDir(ds: string, pointId: string): string {
    return path.join(this.dataSourceDir(ds), 'points', checkPointId(pointId));
  }
  indexPath(ds: string, pointId: string, diskId: string): string {
    return path.join(this.pointDir(ds, pointId), `${checkDiskId(diskId)}.fidx`);
  }
  private sessionDir(sessionId: string): string {
    return path.join(this.root, 'sessions', checkSessionId(sessionId));
  }
  private get deletionLog(): string {
    return path.join(this.root, 'deletions.log');
  }

  // ---- data sources and shadow storage ------------------------------------------------

  async listDataSources(): Promise<string[]> {
    const names = await fs.readdir(path.join(this.root, 'datasources')).catch((err) => {
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
      await fs.mkdir(path.join(this.dataSourceDir(ds), 'points'), { recursive: true });
      await fsyncDir(path.join(this.root, 'datasources'));
      await this.writeSettings(settings);
      return settings;
    });
  }

  private async readSettings(ds: string): Promise<DataSourceSettings | undefined> {
    try {
      return JSON.parse(await fs.readFile(path.join(this.dataSourceDir(ds), 'settings.json'), 'utf8')) as DataSourceSettings;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  private writeSettings(s: DataSourceSettings): Promise<void> {
    return writeFileDurable(path.join(this.dataSourceDir(s.dataSource), 'settings.json'), JSON.stringify(s, null, 2) + '\n');
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
    let inFlight = 0;
    for (const sess of await this.listSessions()) {
      if (sess.dataSource === ds) for (const d of Object.values(sess.disks)) inFlight += d.addedBytes;
    }
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
      const candidates = await this.evictionCandidates(ds);
      if (candidates.length === 0) {
        throw new RepositoryError('CONFLICT', `no recovery point of ${ds} can be deleted`, 'the newest point and points being restored or used as a backup base are kept');
      }
      return this.deletePointLocked(ds, candidates[0].pointId, 'delete-oldest');
    });
  }

  /** Deletes one point (not the newest, not one in use). */
  async deletePoint(ds: string, pointId: string): Promise<PointDeletion> {
    return this.dsMutex.run(ds, async () => {
      const candidates = await this.evictionCandidates(ds);
      if (!candidates.some((p) => p.pointId === pointId)) {
        await this.getPoint(ds, pointId);
        throw new RepositoryError('CONFLICT', `recovery point ${ds}/${pointId} is in use or the newest`, 'wait for the restore or backup to finish; the newest point is always kept');
      }
      return this.deletePointLocked(ds, pointId, 'requested');
    });
  }

  /** Retention range and maximum count (the server's enforceRetention activity). */
  async enforceRetention(ds: string): Promise<PointDeletion[]> {
    return this.dsMutex.run(ds, () => this.enforceLocked(ds, 0, 'retention-range'));
  }

  /** Oldest first; never the newest, never one leased by a restore or used as a session base. */
  private async evictionCandidates(ds: string): Promise<RecoveryPointManifest[]> {
    const points = await this.listPoints(ds);
    const busy = new Set<string>();
    for (const l of await this.listRestoreLeases()) if (l.dataSource === ds) busy.add(l.pointId);
    for (const [key, n] of this.activeReads) if (n > 0 && key.startsWith(`${ds}/`)) busy.add(key.slice(ds.length + 1));
    for (const sess of await this.listSessions()) {
      if (sess.dataSource !== ds) continue;
      if (sess.basePoint) busy.add(sess.basePoint);
      for (const d of Object.values(sess.disks)) if (d.basePoint) busy.add(d.basePoint);
    }
    return points.slice(0, -1).filter((p) => !busy.has(p.pointId));
  }

  /**
   * Deletes points until the data source is within its count, age and size limits with
   * `incomingBytes` more. With incomingBytes > 0 (a commit) it first checks the point can fit
   * at all, so nothing is deleted for a backup that fails anyway.
   */
  private async enforceLocked(ds: string, incomingBytes: number, sizeReason: PointDeletion['reason']): Promise<PointDeletion[]> {
    const s = await this.getSettings(ds);
    const max = maxBytes(s.shadowStorage.maxSize, await this.volumeBytes());
    const deleted: PointDeletion[] = [];
    if (incomingBytes > 0 && Number.isFinite(max)) {
      const candidates = new Set((await this.evictionCandidates(ds)).map((p) => p.pointId));
      const kept = (await this.listPoints(ds)).filter((p) => !candidates.has(p.pointId));
      const floor = kept.reduce((a, p) => a + p.ownedBytes, 0) + incomingBytes;
      if (floor > max) {
        throw new RepositoryError(
          'SHADOW_STORAGE_FULL',
          `recovery point of ${ds} needs ${incomingBytes} bytes; shadow storage maximum is ${max} bytes and ${floor - incomingBytes} bytes are held by points that cannot be deleted (the newest, or in use)`,
          `raise the limit (hvprotect shadowstorage resize --for ${ds} --maxsize <bigger|UNBOUNDED>) or wait for restores to finish`,
          { neededBytes: incomingBytes, maximumBytes: max, pinnedBytes: floor - incomingBytes },
        );
      }
    }
    // count: room for the incoming point too
    const extra = incomingBytes > 0 ? 1 : 0;
    for (;;) {
      const points = await this.listPoints(ds);
      if (points.length + extra <= s.shadowStorage.maxPoints) break;
      const c = await this.evictionCandidates(ds);
      if (c.length === 0) break;
      deleted.push(await this.deletePointLocked(ds, c[0].pointId, 'max-points'));
    }
    if (s.shadowStorage.retentionRangeDays !== undefined) {
      const cutoff = Date.now() - s.shadowStorage.retentionRangeDays * 86_400_000;
      for (const p of await this.evictionCandidates(ds)) {
        if (parsePointId(p.pointId).getTime() >= cutoff) break;
        deleted.push(await this.deletePointLocked(ds, p.pointId, 'retention-range'));
      }
    }
    if (Number.isFinite(max)) {
      for (;;) {
        const used = (await this.listPoints(ds)).reduce((a, p) => a + p.ownedBytes, 0);
        if (used + incomingBytes <= max) break;
        const c = await this.evictionCandidates(ds);
        if (c.length === 0) {
          if (incomingBytes > 0) {
            throw new RepositoryError('SHADOW_STORAGE_FULL', `recovery point of ${ds} (${incomingBytes} bytes) does not fit in shadow storage of ${max} bytes (${used} used after deleting ${deleted.length} points)`, `raise the limit (hvprotect shadowstorage resize --for ${ds} --maxsize <bigger|UNBOUNDED>)`);
          }
          break;
        }
        deleted.push(await this.deletePointLocked(ds, c[0].pointId, incomingBytes > 0 ? 'shadow-storage-full' : sizeReason));
      }
    }
    return deleted;
  }

  /**
   * Deletes a point: its chunks still used by the next point become the next point's (the
   * ownership moves so used bytes stay right), the manifest goes first (the point stops
   * existing atomically), then the deletion is logged and the folder removed.
   */
  private async deletePointLocked(ds: string, pointId: string, reason: PointDeletion['reason']): Promise<PointDeletion> {
    const points = await this.listPoints(ds);
    const i = points.findIndex((p) => p.pointId === pointId);
    if (i < 0) throw new RepositoryError('NOT_FOUND', `no recovery point ${ds}/${pointId}`);
    const victim = points[i];
    const prev = points[i - 1];
    const next = points[i + 1];
    let transferred = 0;
    if (next) {
      for (const disk of next.disks) {
        if (!victim.disks.some((d) => d.diskId === disk.diskId)) continue;
        transferred += await this.inheritedBytes(ds, victim.pointId, next.pointId, prev?.disks.some((d) => d.diskId === disk.diskId) ? prev.pointId : undefined, disk.diskId);
      }
      next.ownedBytes += transferred;
      await writeFileDurable(path.join(this.pointDir(ds, next.pointId), MANIFEST_FILE), JSON.stringify(next, null, 2) + '\n');
    }
    const dir = this.pointDir(ds, pointId);
    await fs.rm(path.join(dir, MANIFEST_FILE));
    await fsyncDir(dir);
    const deletion: PointDeletion = { time: new Date().toISOString(), dataSource: ds, pointId, reason, freedBytes: Math.max(0, victim.ownedBytes - transferred) };
    await appendLineDurable(this.deletionLog, JSON.stringify(deletion));
    await fs.rm(dir, { recursive: true, force: true });
    this.logger?.info(deletion, 'recovery point deleted');
    return deletion;
  }

  /** Stored bytes of slots the next point shares with the victim that the victim owned. */
  private async inheritedBytes(ds: string, victim: string, next: string, prev: string | undefined, diskId: string): Promise<number> {
    const vFile = this.indexPath(ds, victim, diskId);
    const nFile = this.indexPath(ds, next, diskId);
    const [vh, nh] = await Promise.all([readIndexHeader(vFile), readIndexHeader(nFile)]);
    if (vh.chunkSize !== nh.chunkSize) return 0;
    const pIter = prev ? readSlots(this.indexPath(ds, prev, diskId)) : undefined;
    let pBlock: { first: number; slots: Buffer } | undefined;
    const nIter = readSlots(nFile);
    let total = 0;
    for await (const { first, slots } of readSlots(vFile, 0, Math.min(vh.count, nh.count))) {
      const nb = (await nIter.next()).value as { first: number; slots: Buffer } | undefined;
      if (pIter) pBlock = (await pIter.next()).value as { first: number; slots: Buffer } | undefined;
      if (!nb) break;
      for (let k = 0; k * DIGEST_SIZE < slots.length; k++) {
        const o = k * DIGEST_SIZE;
        const d = slots.subarray(o, o + DIGEST_SIZE);
        if (d.equals(ZERO_DIGEST) || !d.equals(nb.slots.subarray(o, o + DIGEST_SIZE))) continue;
        if (pBlock && o < pBlock.slots.length && pBlock.first === first && d.equals(pBlock.slots.subarray(o, o + DIGEST_SIZE))) continue;
        total += (await this.chunks.storedSize(d.toString('hex'))) ?? 0;
      }
    }
    await nIter.return(undefined);
    if (pIter) await pIter.return(undefined);
    return total;
  }

  async readDeletionLog(): Promise<PointDeletion[]> {
    const text = await fs.readFile(this.deletionLog, 'utf8').catch((err) => {
      if (isNotFound(err)) return '';
      throw err;
    });
    return text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as PointDeletion);
  }

  // ---- recovery points ----------------------------------------------------------------

  /** Committed points of a data source, oldest first. */
  async listPoints(ds: string): Promise<RecoveryPointManifest[]> {
    const dir = path.join(this.dataSourceDir(ds), 'points');
    const names = await fs.readdir(dir).catch((err) => {
      if (isNotFound(err)) return [] as string[];
      throw err;
    });
    const out: RecoveryPointManifest[] = [];
    for (const n of names.filter(isPointId).sort()) {
      try {
        out.push(await readManifest(path.join(dir, n, MANIFEST_FILE)));
      } catch (err) {
        if (isNotFound(err)) continue; // being written or deleted: does not exist
        throw err;
      }
    }
    return out;
  }

  async getPoint(ds: string, pointId: string): Promise<RecoveryPointManifest> {
    try {
      return await readManifest(path.join(this.pointDir(ds, pointId), MANIFEST_FILE));
    } catch (err) {
      if (isNotFound(err)) throw new RepositoryError('NOT_FOUND', `no recovery point ${ds}/${pointId}`, 'list the points of the data source for valid ids');
      throw err;
    }
  }

  // ---- backup sessions (the GC lease) ------------------------------------------------

  /**
   * Opens a backup session. Its start time is the GC cutoff while it lives: GC spares every chunk
   * newer than the oldest live session. Its base point cannot be deleted while it lives.
   */
  async beginSession(ds: string, opts: { basePoint?: string; chunkSize?: number } = {}): Promise<BackupSession> {
    const settings = await this.ensureDataSource(ds, { chunkSize: opts.chunkSize });
    if (opts.basePoint !== undefined) await this.getPoint(ds, opts.basePoint);
    const now = Date.now();
    const session: BackupSession = {
      sessionId: randomBytes(16).toString('hex'),
      dataSource: ds,
      basePoint: opts.basePoint,
      chunkSize: settings.chunkSize,
      startedAt: new Date(now).toISOString(),
      expiresAt: new Date(now + (this.opts.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS)).toISOString(),
      disks: {},
    };
    await fs.mkdir(this.sessionDir(session.sessionId), { recursive: true });
    await this.saveSession(session);
    return session;
  }

  /**
   * Atomic against a process crash (temp + rename) but not fsynced: it is rewritten on every
   * index patch, and a session lost to a power cut only means the agent begins a new one.
   */
  private async saveSession(s: BackupSession): Promise<void> {
    const file = path.join(this.sessionDir(s.sessionId), 'session.json');
    const tmp = tempNameFor(file);
    await fs.writeFile(tmp, JSON.stringify(s) + '\n', { mode: 0o640 });
    await fs.rename(tmp, file);
  }

  async getSession(sessionId: string): Promise<BackupSession> {
    let s: BackupSession;
    try {
      s = JSON.parse(await fs.readFile(path.join(this.sessionDir(sessionId), 'session.json'), 'utf8')) as BackupSession;
    } catch (err) {
      if (isNotFound(err)) throw new RepositoryError('NOT_FOUND', `no backup session ${sessionId}`, 'it was committed, aborted or expired: begin a new session');
      throw err;
    }
    if (Date.parse(s.expiresAt) < Date.now()) {
      throw new RepositoryError('NOT_FOUND', `backup session ${sessionId} expired at ${s.expiresAt}`, 'begin a new session');
    }
    return s;
  }

  private async renew(s: BackupSession): Promise<void> {
    s.expiresAt = new Date(Date.now() + (this.opts.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS)).toISOString();
    await this.saveSession(s);
  }

  /** Live sessions (expired ones are ignored and removed by GC / open). */
  async listSessions(): Promise<BackupSession[]> {
    const dir = path.join(this.root, 'sessions');
    const names = await fs.readdir(dir).catch(() => [] as string[]);
    const out: BackupSession[] = [];
    for (const n of names) {
      if (!/^[0-9a-f]{32}$/.test(n)) continue;
      try {
        const s = JSON.parse(await fs.readFile(path.join(dir, n, 'session.json'), 'utf8')) as BackupSession;
        if (Date.parse(s.expiresAt) >= Date.now()) out.push(s);
      } catch {
        // a session being created or removed
      }
    }
    return out;
  }

  /** Aborts a session: its staged indexes go; its chunks stay until GC finds them unused. */
  async abortSession(sessionId: string): Promise<void> {
    await this.sessionMutex.run(sessionId, () => fs.rm(this.sessionDir(sessionId), { recursive: true, force: true }));
  }

  private async expireSessionsAndLeases(): Promise<void> {
    for (const sub of ['sessions', 'leases']) {
      const dir = path.join(this.root, sub);
      for (const n of await fs.readdir(dir).catch(() => [] as string[])) {
        const file = sub === 'sessions' ? path.join(dir, n, 'session.json') : path.join(dir, n);
        try {
          const o = JSON.parse(await fs.readFile(file, 'utf8')) as { expiresAt: string };
          if (Date.parse(o.expiresAt) >= Date.now()) continue;
        } catch (err) {
          // unreadable or half-created: remove only when older than a minute
          const st = await fs.stat(path.join(dir, n)).catch(() => undefined);
          if (st && Date.now() - st.mtimeMs < 60_000) continue;
          void err;
        }
        await fs.rm(path.join(dir, n), { recursive: true, force: true });
      }
    }
  }

  private async stagedIndex(s: BackupSession, diskId: string, virtualSize: number, basePoint: string | undefined): Promise<IndexBuilder> {
    const file = path.join(this.sessionDir(s.sessionId), `${checkDiskId(diskId)}.fidx`);
    const known = s.disks[diskId];
    if (known) {
      if (known.virtualSize !== virtualSize) {
        throw new RepositoryError('CONFLICT', `disk ${diskId} was started with virtual size ${known.virtualSize}, not ${virtualSize}`, 'begin a new session for a resized disk');
      }
      return IndexBuilder.open(file);
    }
    let builder: IndexBuilder;
    if (basePoint) {
      const base = await this.getPoint(s.dataSource, basePoint);
      const bd = base.disks.find((d) => d.diskId === diskId);
      if (!bd) throw new RepositoryError('NOT_FOUND', `base point ${basePoint} has no disk ${diskId}`, 'send this disk as a full index or without a base');
      if (bd.chunkSize !== s.chunkSize) throw new RepositoryError('CONFLICT', `base disk has chunk size ${bd.chunkSize}, session ${s.chunkSize}`);
      builder = await IndexBuilder.cloneFrom(this.indexPath(s.dataSource, basePoint, diskId), file, virtualSize);
    } else {
      builder = await IndexBuilder.createEmpty(file, virtualSize, s.chunkSize);
    }
    s.disks[diskId] = { virtualSize, basePoint, changedChunks: 0, addedBytes: 0 };
    return builder;
  }

  /**
   * Writes index slots of a disk into the session: `slots[i]` gets digest i of `digests`
   * (32 bytes each, zero bytes = all-zero chunk). The first call for a disk creates its staged
   * index, cloned from `basePoint` (default: the session's base) or all zero. Every non-zero
   * digest must be present in the chunk store; the reply lists missing ones instead.
   */
  async patchIndex(sessionId: string, diskId: string, opts: { virtualSize: number; basePoint?: string | null }, slots: number[], digests: Buffer): Promise<{ changedChunks: number; addedBytes: number }> {
    checkDiskId(diskId);
    checkVirtualSize(opts.virtualSize);
    if (digests.length !== slots.length * DIGEST_SIZE) {
      throw new RepositoryError('INVALID_ARGUMENT', `${slots.length} slots but ${digests.length} digest bytes`, 'send 32 digest bytes per slot');
    }
    return this.sessionMutex.run(sessionId, async () => {
      const s = await this.getSession(sessionId);
      const base = opts.basePoint === null ? undefined : opts.basePoint ?? s.basePoint;
      if (base !== undefined) checkPointId(base);
      const sizes = await this.checkPresent(digests, s);
      const builder = await this.stagedIndex(s, diskId, opts.virtualSize, base);
      const previous = await builder.patch(slots, digests);
      const d = s.disks[diskId];
      let changed = 0;
      let added = 0;
      for (let i = 0; i < slots.length; i++) {
        const o = i * DIGEST_SIZE;
        if (previous.compare(digests, o, o + DIGEST_SIZE, o, o + DIGEST_SIZE) === 0) continue;
        changed++;
        added += sizes[i];
      }
      d.changedChunks += changed;
      d.addedBytes += added;
      await this.renew(s);
      return { changedChunks: d.changedChunks, addedBytes: d.addedBytes };
    });
  }

  /** A whole index at once (32 bytes per slot), replacing whatever was staged for the disk. */
  async putFullIndex(sessionId: string, diskId: string, virtualSize: number, digests: Buffer): Promise<{ changedChunks: number; addedBytes: number }> {
    checkDiskId(diskId);
    checkVirtualSize(virtualSize);
    if (digests.length % DIGEST_SIZE !== 0) {
      throw new RepositoryError('INVALID_ARGUMENT', `full index of ${digests.length} bytes is not a whole number of 32-byte slots`, 'send 32 bytes per chunk of the disk, zero bytes for all-zero chunks');
    }
    return this.sessionMutex.run(sessionId, async () => {
      const s = await this.getSession(sessionId);
      delete s.disks[diskId];
      const sizes = await this.checkPresent(digests, s);
      const builder = await this.stagedIndex(s, diskId, virtualSize, undefined);
      await builder.writeAll(digests);
      const d = s.disks[diskId];
      for (let i = 0; i < sizes.length; i++) {
        if (sizes[i] > 0 || !digests.subarray(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE).equals(ZERO_DIGEST)) d.changedChunks++;
        d.addedBytes += sizes[i];
      }
      await this.renew(s);
      return { changedChunks: d.changedChunks, addedBytes: d.addedBytes };
    });
  }

  /** Touches every non-zero digest; returns stored sizes (0 for zero), or CONFLICT with the missing. */
  private async checkPresent(digests: Buffer, session: BackupSession): Promise<number[]> {
    const notBefore = Date.parse(session.startedAt);
    const n = digests.length / DIGEST_SIZE;
    const sizes = new Array<number>(n).fill(0);
    const missing: string[] = [];
    const seen = new Map<string, number>();
    const CONCURRENCY = 16;
    let next = 0;
    const worker = async () => {
      while (next < n) {
        const i = next++;
        const d = digests.subarray(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE);
        if (d.equals(ZERO_DIGEST)) continue;
        const hex = d.toString('hex');
        let size = seen.get(hex);
        if (size === undefined) {
          size = (await this.chunks.touchRecent(hex, notBefore)) ?? -1;
          seen.set(hex, size);
        }
        if (size < 0) missing.push(hex);
        else sizes[i] = size;
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    if (missing.length > 0) {
      throw new RepositoryError('CONFLICT', `${missing.length} chunks referenced by the index are not in the repository`, 'upload the missing chunks (PUT /v1/chunks/<digest>), then send the index again', { missing: [...new Set(missing)].slice(0, 1000) });
    }
    return sizes;
  }

  /**
   * Commits the session as a recovery point. Disks without a staged index are cloned unchanged
   * from the base point. Order: fit in shadow storage (may delete oldest points) -> syncfs
   * (chunks durable) -> indexes into the point folder -> manifest rename (the commit).
   */
  async commitPoint(sessionId: string, input: CommitPointInput): Promise<RecoveryPointManifest> {
    if (!isKind(input.kind)) throw new RepositoryError('INVALID_ARGUMENT', `kind ${String(input.kind)}`, 'one of initial-replica, express-full, consistency-check');
    if (!isMode(input.mode)) throw new RepositoryError('INVALID_ARGUMENT', `mode ${String(input.mode)}`, 'online or offline');
    if (!Array.isArray(input.disks) || input.disks.length === 0) throw new RepositoryError('INVALID_ARGUMENT', 'a recovery point needs at least one disk');
    const createdAt = input.createdAt === undefined ? new Date() : new Date(input.createdAt);
    if (Number.isNaN(createdAt.getTime())) throw new RepositoryError('INVALID_ARGUMENT', `createdAt ${String(input.createdAt)}`, 'an ISO 8601 time');
    if (input.vm !== undefined && !isPlainJson(input.vm)) {
      throw new RepositoryError('INVALID_ARGUMENT', 'vm is not a JSON object of at most 32 levels', 'the VM configuration as a plain JSON object');
    }
    const seenDisks = new Set<string>();
    for (const d of input.disks) {
      if (typeof d !== 'object' || d === null) throw new RepositoryError('INVALID_ARGUMENT', `disk ${JSON.stringify(d)}`, 'each disk as { diskId, fileName, virtualSize }');
      checkDiskId(d.diskId);
      checkVirtualSize(d.virtualSize);
      if (seenDisks.has(d.diskId)) throw new RepositoryError('INVALID_ARGUMENT', `disk ${d.diskId} listed twice`);
      seenDisks.add(d.diskId);
      if (typeof d.fileName !== 'string' || d.fileName.length > 1024) throw new RepositoryError('INVALID_ARGUMENT', `fileName of disk ${d.diskId}`, 'the disk file name as a string');
    }
    return this.sessionMutex.run(sessionId, async () => {
      const s = await this.getSession(sessionId);
      const ds = s.dataSource;
      const sdir = this.sessionDir(sessionId);
      const disks: RecoveryPointManifest['disks'] = [];
      let indexBytes = 0;
      for (const d of input.disks) {
        let builder: IndexBuilder;
        if (s.disks[d.diskId]) {
          builder = await IndexBuilder.open(path.join(sdir, `${d.diskId}.fidx`));
          if (builder.virtualSize !== d.virtualSize) {
            throw new RepositoryError('CONFLICT', `disk ${d.diskId}: index was sent for ${builder.virtualSize} bytes, commit says ${d.virtualSize}`);
          }
        } else if (s.basePoint) {
          builder = await this.stagedIndex(s, d.diskId, d.virtualSize, s.basePoint);
        } else {
          throw new RepositoryError('CONFLICT', `no index was sent for disk ${d.diskId}`, 'send its index before committing');
        }
        const indexDigest = await builder.finish();
        indexBytes += INDEX_HEADER_SIZE + builder.count * DIGEST_SIZE;
        const sd = s.disks[d.diskId];
        disks.push({
          diskId: d.diskId,
          fileName: d.fileName,
          virtualSize: d.virtualSize,
          chunkSize: builder.chunkSize,
          indexDigest,
          changedChunks: sd.changedChunks,
          totalChunks: builder.count,
          addedBytes: sd.addedBytes,
        });
      }
      const ownedBytes = indexBytes + disks.reduce((a, d) => a + d.addedBytes, 0);
      return this.dsMutex.run(ds, async () => {
        await this.enforceLocked(ds, ownedBytes, 'shadow-storage-full');
        const points = await this.listPoints(ds);
        const pointId = pointIdFor(createdAt, points[points.length - 1]?.pointId);
        const manifest: RecoveryPointManifest = {
          format: MANIFEST_FORMAT,
          dataSource: ds,
          pointId,
          createdAt: createdAt.toISOString(),
          committedAt: new Date().toISOString(),
          kind: input.kind,
          mode: input.mode,
          ...(s.basePoint ? { basePoint: s.basePoint } : {}),
          disks,
          vm: input.vm ?? {},
          ownedBytes,
        };
        if (!this.opts.unsafeSkipSync) await syncFileSystem(this.root);
        const pdir = this.pointDir(ds, pointId);
        await fs.mkdir(pdir);
        await fsyncDir(path.dirname(pdir));
        for (const d of disks) await fs.rename(path.join(sdir, `${d.diskId}.fidx`), path.join(pdir, `${d.diskId}.fidx`));
        await fsyncDir(pdir);
        await writeFileDurable(path.join(pdir, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
        await fs.rm(sdir, { recursive: true, force: true });
        // The session's base (kept while it lived) may now go if the count says so.
        await this.enforceLocked(ds, 0, 'max-points');
        this.logger?.info({ dataSource: ds, pointId, kind: manifest.kind, ownedBytes }, 'recovery point committed');
        return manifest;
      });
    });
  }

  // ---- restore leases -------------------------------------------------------------------

  /** A restore lease keeps a point from being deleted while a restore reads it. */
  async beginRestore(ds: string, pointId: string, ttlMs = DEFAULT_RESTORE_LEASE_TTL_MS): Promise<RestoreLease> {
    if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0 || ttlMs > 365 * 86_400_000) {
      throw new RepositoryError('INVALID_ARGUMENT', `restore lease of ${String(ttlMs)} ms`, 'a lease time from 1 ms to a year');
    }
    await this.getPoint(ds, pointId);
    const now = Date.now();
    const lease: RestoreLease = {
      leaseId: randomBytes(16).toString('hex'),
      dataSource: ds,
      pointId,
      startedAt: new Date(now).toISOString(),
      expiresAt: new Date(now + ttlMs).toISOString(),
    };
    await writeFileDurable(path.join(this.root, 'leases', `${lease.leaseId}.json`), JSON.stringify(lease) + '\n');
    return lease;
  }

  async endRestore(leaseId: string): Promise<void> {
    checkSessionId(leaseId);
    await fs.rm(path.join(this.root, 'leases', `${leaseId}.json`), { force: true });
  }

  async listRestoreLeases(): Promise<RestoreLease[]> {
    const dir = path.join(this.root, 'leases');
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
    // Take the lease under the data source lock so no deletion is half way through.
    await this.dsMutex.run(ds, async () => {
      await this.getPoint(ds, pointId);
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
      for (const p of await this.listPoints(ds)) {
        for (const d of p.disks) out.push({ file: this.indexPath(ds, p.pointId, d.diskId), dataSource: ds, pointId: p.pointId, diskId: d.diskId });
      }
    }
    for (const s of await this.listSessions()) {
      for (const diskId of Object.keys(s.disks)) {
        if (isDiskId(diskId)) out.push({ file: path.join(this.sessionDir(s.sessionId), `${diskId}.fidx`), dataSource: s.dataSource, sessionId: s.sessionId, diskId });
      }
    }
    return out;
  }

  async removeExpired(): Promise<void> {
    await this.expireSessionsAndLeases();
  }
}
