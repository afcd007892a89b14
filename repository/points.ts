// Committed recovery points of a data source: list, read, write (the commit's last step) and
// delete. A point exists exactly while its manifest does.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import type { ChunkStore } from './chunk-store';
import { ZERO_DIGEST } from './zero';
import { appendLineDurable, fsyncDir, syncFileSystem, writeFileDurable } from './durable';
import { RepositoryError, isNotFound } from './errors';
import { DIGEST_SIZE, readIndexHeader, readSlots } from './fixed-index';
import { isPointId } from './ids';
import type { RepositoryLayout } from './layout';
import { MANIFEST_FILE, manifestText, readManifest } from './manifest';
import type { RecoveryPointManifest } from './manifest';

export type DeletionReason = 'shadow-storage-full' | 'shadow-storage-resize' | 'delete-oldest' | 'max-points' | 'retention-range' | 'requested';

/** One line of deletions.log. */
export interface PointDeletion {
  time: string;
  dataSource: string;
  pointId: string;
  reason: DeletionReason;
  freedBytes: number;
}

export class RecoveryPoints {
  constructor(
    private readonly layout: RepositoryLayout,
    private readonly chunks: ChunkStore,
    private readonly logger?: Logger,
  ) {}

  /** Committed points of a data source, oldest first. */
  async list(ds: string): Promise<RecoveryPointManifest[]> {
    const dir = this.layout.pointsDir(ds);
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

  async get(ds: string, pointId: string): Promise<RecoveryPointManifest> {
    try {
      return await readManifest(this.layout.manifestFile(ds, pointId));
    } catch (err) {
      if (isNotFound(err)) throw new RepositoryError('NOT_FOUND', `no recovery point ${ds}/${pointId}`, 'list the points of the data source for valid ids');
      throw err;
    }
  }

  /**
   * Makes a point exist: syncfs (its chunks durable) -> point folder -> indexes renamed in from
   * `stagedIndexes` -> manifest rename (the commit). The caller holds the data source's lock.
   */
  async write(manifest: RecoveryPointManifest, stagedIndexes: Map<string, string>, opts: { skipSync?: boolean } = {}): Promise<void> {
    const ds = manifest.dataSource;
    if (!opts.skipSync) await syncFileSystem(this.layout.root);
    const pdir = this.layout.pointDir(ds, manifest.pointId);
    await fs.mkdir(pdir);
    await fsyncDir(path.dirname(pdir));
    for (const d of manifest.disks) await fs.rename(stagedIndexes.get(d.diskId)!, this.layout.indexFile(ds, manifest.pointId, d.diskId));
    await fsyncDir(pdir);
    await writeFileDurable(this.layout.manifestFile(ds, manifest.pointId), manifestText(manifest));
  }

  /**
   * Deletes a point: its chunks still used by the next point become the next point's (the
   * ownership moves so used bytes stay right), the manifest goes first (the point stops
   * existing atomically), then the deletion is logged and the folder removed. The caller holds
   * the data source's lock and has checked the point may go.
   */
  async delete(ds: string, pointId: string, reason: DeletionReason): Promise<PointDeletion> {
    const points = await this.list(ds);
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
      await writeFileDurable(this.layout.manifestFile(ds, next.pointId), manifestText(next));
    }
    const dir = this.layout.pointDir(ds, pointId);
    await fs.rm(path.join(dir, MANIFEST_FILE));
    await fsyncDir(dir);
    const deletion: PointDeletion = { time: new Date().toISOString(), dataSource: ds, pointId, reason, freedBytes: Math.max(0, victim.ownedBytes - transferred) };
    await appendLineDurable(this.layout.deletionLog, JSON.stringify(deletion));
    await fs.rm(dir, { recursive: true, force: true });
    this.logger?.info(deletion, 'recovery point deleted');
    return deletion;
  }

  /** Stored bytes of slots the next point shares with the victim that the victim owned. */
  private async inheritedBytes(ds: string, victim: string, next: string, prev: string | undefined, diskId: string): Promise<number> {
    const vFile = this.layout.indexFile(ds, victim, diskId);
    const nFile = this.layout.indexFile(ds, next, diskId);
    const [vh, nh] = await Promise.all([readIndexHeader(vFile), readIndexHeader(nFile)]);
    if (vh.chunkSize !== nh.chunkSize) return 0;
    const pIter = prev ? readSlots(this.layout.indexFile(ds, prev, diskId)) : undefined;
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
    const text = await fs.readFile(this.layout.deletionLog, 'utf8').catch((err) => {
      if (isNotFound(err)) return '';
      throw err;
    });
    return text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as PointDeletion);
  }
}
