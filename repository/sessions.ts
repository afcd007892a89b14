// Backup sessions: a backup in progress, and the GC lease of what it uploads.
//   sessions/<sessionId>/session.json   data source, base point, start, expiry, per-disk counters
//   sessions/<sessionId>/<diskId>.fidx  the staged index: cloned from the base (or all zero), patched
// A session's start is GC's cutoff while it lives; its base point cannot be deleted. Commit turns
// the staged indexes into a recovery point (points.ts) after retention made room (retention.ts).
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import type { ChunkStore } from './chunk-store';
import { ZERO_DIGEST } from './zero';
import { writeFileDurable } from './durable';
import { RepositoryError, isNotFound } from './errors';
import { DIGEST_SIZE, INDEX_HEADER_SIZE, IndexBuilder } from './fixed-index';
import { checkDiskId, checkPointId, isDiskId, pointIdFor } from './ids';
import type { RepositoryLayout } from './layout';
import {
  EMPTY_BACKUP_RECORD, MANIFEST_FORMAT, backupRecordProblem, isKind, isMode, isPlainJsonObject, vmConfigurationProblem,
} from './manifest';
import type { BackupMode, BackupRecord, RecoveryPointKind, RecoveryPointManifest, VmConfiguration } from './manifest';
import { KeyedMutex } from './mutex';
import type { DeletionReason, PointDeletion, RecoveryPoints } from './points';

/** A backup session (the GC lease) lapses after this long without a call. */
export const DEFAULT_SESSION_TTL_MS = 6 * 60 * 60 * 1000;
/** VHDX's largest disk, 64 TiB: a bigger claim would stage an index of terabytes. */
export const MAX_VIRTUAL_SIZE = 64 * 1024 ** 4;

export interface BackupSession {
  sessionId: string;
  dataSource: string;
  basePoint?: string;
  chunkSize: number;
  startedAt: string;
  expiresAt: string;
  /** The workflow run the session belongs to: its id follows from it, and it lives as long as the run. */
  owner?: SessionOwner;
  disks: Record<string, { virtualSize: number; basePoint?: string; changedChunks: number; addedBytes: number }>;
}

export interface SessionOwner {
  workflowId: string;
  runId: string;
}

/** The session id of a workflow run: a retried plan finds the session its first attempt opened. */
export function sessionIdOf(owner: SessionOwner): string {
  return createHash('sha256').update(`${owner.workflowId}\n${owner.runId}`).digest('hex').slice(0, 32);
}

export interface CommitPointInput {
  kind: RecoveryPointKind;
  mode: BackupMode;
  /** ISO time of the checkpoint; default now. */
  createdAt?: string;
  disks: Array<{ diskId: string; fileName: string; virtualSize: number }>;
  backup?: BackupRecord;
  vm?: VmConfiguration;
  annotations?: Record<string, unknown>;
}

export interface IndexCounters {
  changedChunks: number;
  addedBytes: number;
}

function checkVirtualSize(n: unknown, max = MAX_VIRTUAL_SIZE): number {
  if (!Number.isSafeInteger(n) || (n as number) <= 0 || (n as number) > MAX_VIRTUAL_SIZE) {
    throw new RepositoryError('INVALID_ARGUMENT', `virtual size ${String(n)}`, `the disk size in bytes, a positive integer up to ${MAX_VIRTUAL_SIZE} (64 TiB)`);
  }
  if ((n as number) > max) {
    throw new RepositoryError('INVALID_ARGUMENT', `virtual size ${String(n)} is above this repository's largest disk, ${max} bytes`,
      'a disk that large is refused before any index is staged; the server\'s --max-disk-size raises the limit');
  }
  return n as number;
}

/** Refuses a commit request that would make a manifest readers cannot use. */
function checkCommitInput(input: CommitPointInput, maxVirtualSize?: number): void {
  if (!isKind(input.kind)) throw new RepositoryError('INVALID_ARGUMENT', `kind ${String(input.kind)}`, 'one of initial-replica, express-full, consistency-check');
  if (!isMode(input.mode)) throw new RepositoryError('INVALID_ARGUMENT', `mode ${String(input.mode)}`, 'online or offline');
  if (!Array.isArray(input.disks) || input.disks.length === 0) throw new RepositoryError('INVALID_ARGUMENT', 'a recovery point needs at least one disk');
  if (input.createdAt !== undefined && Number.isNaN(new Date(input.createdAt).getTime())) throw new RepositoryError('INVALID_ARGUMENT', `createdAt ${String(input.createdAt)}`, 'an ISO 8601 time');
  const problem = (input.backup === undefined ? undefined : backupRecordProblem(input.backup)) ?? (input.vm === undefined ? undefined : vmConfigurationProblem(input.vm));
  if (problem) throw new RepositoryError('INVALID_ARGUMENT', problem, 'see RecoveryPointManifest in repository/manifest.ts');
  if (input.annotations !== undefined && !isPlainJsonObject(input.annotations)) {
    throw new RepositoryError('INVALID_ARGUMENT', 'annotations is not a JSON object of at most 32 levels', 'free-form facts as a plain JSON object');
  }
  const seen = new Set<string>();
  for (const d of input.disks) {
    if (typeof d !== 'object' || d === null) throw new RepositoryError('INVALID_ARGUMENT', `disk ${JSON.stringify(d)}`, 'each disk as { diskId, fileName, virtualSize }');
    checkDiskId(d.diskId);
    checkVirtualSize(d.virtualSize, maxVirtualSize);
    if (seen.has(d.diskId)) throw new RepositoryError('INVALID_ARGUMENT', `disk ${d.diskId} listed twice`);
    seen.add(d.diskId);
    if (typeof d.fileName !== 'string' || d.fileName.length > 1024) throw new RepositoryError('INVALID_ARGUMENT', `fileName of disk ${d.diskId}`, 'the disk file name as a string');
  }
}

export interface SessionDeps {
  layout: RepositoryLayout;
  chunks: ChunkStore;
  points: RecoveryPoints;
  dsMutex: KeyedMutex;
  /** Makes room for `incomingBytes` in the data source (the caller holds its lock). */
  enforceRetention(ds: string, incomingBytes: number, sizeReason: DeletionReason): Promise<PointDeletion[]>;
  ttlMs: number;
  /** Largest virtual size a disk may claim (default MAX_VIRTUAL_SIZE). */
  maxVirtualSize?: number;
  skipSync: boolean;
  logger?: Logger;
}

export class BackupSessions {
  /** One call at a time per session: patches read-modify-write its state file. */
  private readonly mutex = new KeyedMutex();

  constructor(private readonly deps: SessionDeps) {}

  /**
   * Opens a backup session. Its start time is the GC cutoff while it lives: GC spares every chunk
   * newer than the oldest live session. Its base point cannot be deleted while it lives.
   */
  async begin(ds: string, chunkSize: number, basePoint?: string, owner?: SessionOwner): Promise<BackupSession> {
    if (basePoint !== undefined) await this.deps.points.get(ds, basePoint);
    const sessionId = owner ? sessionIdOf(owner) : randomBytes(16).toString('hex');
    return this.mutex.run(sessionId, async () => {
      if (owner) {
        // The run's session already open (a retried plan): the same one, renewed.
        const open = await this.get(sessionId).catch(() => undefined);
        if (open && open.dataSource === ds && open.basePoint === basePoint && open.chunkSize === chunkSize) {
          await this.renew(open);
          return open;
        }
      }
      const now = Date.now();
      const session: BackupSession = {
        sessionId,
        dataSource: ds,
        basePoint,
        chunkSize,
        startedAt: new Date(now).toISOString(),
        expiresAt: new Date(now + this.deps.ttlMs).toISOString(),
        ...(owner ? { owner } : {}),
        disks: {},
      };
      // A session of this id that expired or differs is gone for good: start it again, empty.
      await this.remove(sessionId);
      await fs.mkdir(this.deps.layout.sessionDir(sessionId), { recursive: true });
      await this.save(session);
      return session;
    });
  }

  /** Keeps a session alive (its owner still runs): another TTL from now. */
  async keepAlive(sessionId: string): Promise<void> {
    await this.mutex.run(sessionId, async () => this.renew(await this.get(sessionId)));
  }

  /**
   * The sessions this process wrote, as last written. Every upload request asks whether its
   * session is still live (auth.ts); reading session.json for that was four thread-pool file
   * operations per request, about a tenth of the storage API's event loop during an ingest.
   * Filled only by save() and emptied when a session ends, both under the session's mutex, so a
   * read racing an end cannot put an ended session back (a session this process has not written
   * since it started is read from its file).
   */
  private readonly written = new Map<string, BackupSession>();

  /** Atomic against a process crash but not fsynced: a session lost to a power cut only means a new one. */
  private async save(s: BackupSession): Promise<void> {
    await writeFileDurable(this.deps.layout.sessionFile(s.sessionId), JSON.stringify(s) + '\n', { fsync: false });
    this.written.set(s.sessionId, structuredClone(s));
  }

  /** Removes a session's folder (it ended), and what this process remembers of it. */
  private async remove(sessionId: string): Promise<void> {
    await fs.rm(this.deps.layout.sessionDir(sessionId), { recursive: true, force: true });
    this.written.delete(sessionId);
  }

  /** Forgets a session removed from outside (expired, removed by the repository's sweep). */
  forget(sessionId: string): void {
    this.written.delete(sessionId);
  }

  async get(sessionId: string): Promise<BackupSession> {
    let s: BackupSession;
    const known = this.written.get(sessionId);
    if (known) s = structuredClone(known);
    else {
      try {
        s = JSON.parse(await fs.readFile(this.deps.layout.sessionFile(sessionId), 'utf8')) as BackupSession;
      } catch (err) {
        if (isNotFound(err)) throw new RepositoryError('NOT_FOUND', `no backup session ${sessionId}`, 'it was committed, aborted or expired: begin a new session');
        throw err;
      }
    }
    if (Date.parse(s.expiresAt) < Date.now()) {
      throw new RepositoryError('NOT_FOUND', `backup session ${sessionId} expired at ${s.expiresAt}`, 'begin a new session');
    }
    return s;
  }

  private async renew(s: BackupSession): Promise<void> {
    s.expiresAt = new Date(Date.now() + this.deps.ttlMs).toISOString();
    await this.save(s);
  }

  /** Live sessions (expired ones are ignored and removed by GC / open). */
  async list(): Promise<BackupSession[]> {
    const dir = this.deps.layout.sessionsDir;
    const out: BackupSession[] = [];
    for (const n of await fs.readdir(dir).catch(() => [] as string[])) {
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

  /** Points of a data source live sessions build on. */
  async pinned(ds: string): Promise<Set<string>> {
    const busy = new Set<string>();
    for (const s of await this.list()) {
      if (s.dataSource !== ds) continue;
      if (s.basePoint) busy.add(s.basePoint);
      for (const d of Object.values(s.disks)) if (d.basePoint) busy.add(d.basePoint);
    }
    return busy;
  }

  /** Bytes uploaded by live sessions of a data source (shadow storage "allocated"). */
  async inFlightBytes(ds: string): Promise<number> {
    let n = 0;
    for (const s of await this.list()) if (s.dataSource === ds) for (const d of Object.values(s.disks)) n += d.addedBytes;
    return n;
  }

  /** Every staged index of every live session (GC marks them). */
  async stagedIndexFiles(): Promise<Array<{ file: string; dataSource: string; sessionId: string; diskId: string }>> {
    const out: Array<{ file: string; dataSource: string; sessionId: string; diskId: string }> = [];
    for (const s of await this.list()) {
      for (const diskId of Object.keys(s.disks)) {
        if (isDiskId(diskId)) out.push({ file: this.deps.layout.stagedIndexFile(s.sessionId, diskId), dataSource: s.dataSource, sessionId: s.sessionId, diskId });
      }
    }
    return out;
  }

  /** Aborts a session: its staged indexes go; its chunks stay until GC finds them unused. */
  async abort(sessionId: string): Promise<void> {
    await this.mutex.run(sessionId, () => this.remove(sessionId));
  }

  private async stagedIndex(s: BackupSession, diskId: string, virtualSize: number, basePoint: string | undefined): Promise<IndexBuilder> {
    const file = this.deps.layout.stagedIndexFile(s.sessionId, diskId);
    const known = s.disks[diskId];
    if (known) {
      if (known.virtualSize !== virtualSize) {
        throw new RepositoryError('CONFLICT', `disk ${diskId} was started with virtual size ${known.virtualSize}, not ${virtualSize}`, 'begin a new session for a resized disk');
      }
      return IndexBuilder.open(file);
    }
    let builder: IndexBuilder;
    if (basePoint) {
      const base = await this.deps.points.get(s.dataSource, basePoint);
      const bd = base.disks.find((d) => d.diskId === diskId);
      if (!bd) throw new RepositoryError('NOT_FOUND', `base point ${basePoint} has no disk ${diskId}`, 'send this disk as a full index or without a base');
      if (bd.chunkSize !== s.chunkSize) throw new RepositoryError('CONFLICT', `base disk has chunk size ${bd.chunkSize}, session ${s.chunkSize}`);
      builder = await IndexBuilder.cloneFrom(this.deps.layout.indexFile(s.dataSource, basePoint, diskId), file, virtualSize);
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
  async patchIndex(sessionId: string, diskId: string, opts: { virtualSize: number; basePoint?: string | null }, slots: number[], digests: Buffer): Promise<IndexCounters> {
    checkDiskId(diskId);
    checkVirtualSize(opts.virtualSize, this.deps.maxVirtualSize);
    if (digests.length !== slots.length * DIGEST_SIZE) {
      throw new RepositoryError('INVALID_ARGUMENT', `${slots.length} slots but ${digests.length} digest bytes`, 'send 32 digest bytes per slot');
    }
    return this.mutex.run(sessionId, async () => {
      const s = await this.get(sessionId);
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
  async putFullIndex(sessionId: string, diskId: string, virtualSize: number, digests: Buffer): Promise<IndexCounters> {
    checkDiskId(diskId);
    checkVirtualSize(virtualSize, this.deps.maxVirtualSize);
    if (digests.length % DIGEST_SIZE !== 0) {
      throw new RepositoryError('INVALID_ARGUMENT', `full index of ${digests.length} bytes is not a whole number of 32-byte slots`, 'send 32 bytes per chunk of the disk, zero bytes for all-zero chunks');
    }
    return this.mutex.run(sessionId, async () => {
      const s = await this.get(sessionId);
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
          size = (await this.deps.chunks.touchRecent(hex, notBefore)) ?? -1;
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
  async commit(sessionId: string, input: CommitPointInput): Promise<RecoveryPointManifest> {
    checkCommitInput(input, this.deps.maxVirtualSize);
    const createdAt = input.createdAt === undefined ? new Date() : new Date(input.createdAt);
    const { layout, points, dsMutex } = this.deps;
    return this.mutex.run(sessionId, async () => {
      const s = await this.get(sessionId);
      const ds = s.dataSource;
      const disks: RecoveryPointManifest['disks'] = [];
      const staged = new Map<string, string>();
      let indexBytes = 0;
      for (const d of input.disks) {
        let builder: IndexBuilder;
        if (s.disks[d.diskId]) {
          builder = await IndexBuilder.open(layout.stagedIndexFile(sessionId, d.diskId));
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
        staged.set(d.diskId, layout.stagedIndexFile(sessionId, d.diskId));
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
      return dsMutex.run(ds, async () => {
        await this.deps.enforceRetention(ds, ownedBytes, 'shadow-storage-full');
        const existing = await points.list(ds);
        const manifest: RecoveryPointManifest = {
          format: MANIFEST_FORMAT,
          dataSource: ds,
          pointId: pointIdFor(createdAt, existing[existing.length - 1]?.pointId),
          createdAt: createdAt.toISOString(),
          committedAt: new Date().toISOString(),
          kind: input.kind,
          mode: input.mode,
          ...(s.basePoint ? { basePoint: s.basePoint } : {}),
          disks,
          backup: input.backup ?? EMPTY_BACKUP_RECORD,
          vm: input.vm ?? {},
          annotations: input.annotations ?? {},
          ownedBytes,
        };
        await points.write(manifest, staged, { skipSync: this.deps.skipSync });
        await this.remove(sessionId);
        // The session's base (kept while it lived) may now go if the count says so.
        await this.deps.enforceRetention(ds, 0, 'max-points');
        this.deps.logger?.info({ dataSource: ds, pointId: manifest.pointId, kind: manifest.kind, ownedBytes }, 'recovery point committed');
        return manifest;
      });
    });
  }
}
