// The checker: proves the repository is sound, or says what is damaged and which recovery
// points that touches. Without readData it checks every index (header, size, checksum, and the
// manifest's digest of it) and that every referenced chunk exists; with readData it also reads,
// decodes and hashes every referenced chunk once. Memory is bounded like GC's: the digest space
// is cut into ranges that fit `memoryBudgetEntries`.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { CHUNK_HEADER_SIZE } from './chunk-store';
import { RepositoryError, isNotFound } from './errors';
import { DIGEST_SIZE, checkIndex, forEachNonZeroSlot, readSlots } from './fixed-index';
import type { Repository } from './repository';

export interface VerifyOptions {
  readData?: boolean;
  /** Move corrupt chunk files to <repository>/quarantine/ so that they read as missing. */
  quarantine?: boolean;
  dataSource?: string;
  memoryBudgetEntries?: number;
  concurrency?: number;
}

export interface DamagedIndex { dataSource: string; pointId: string; diskId: string; problem: string }
export interface DamagedChunk { digest: string; problem: 'missing' | 'corrupt'; detail: string }
export interface AffectedPoint { dataSource: string; pointId: string; disks: string[]; damagedChunks: number; damagedIndexes: number }

export interface VerifyReport {
  ok: boolean;
  readData: boolean;
  points: number;
  indexes: number;
  chunksChecked: number;
  bytesRead: number;
  damagedIndexes: DamagedIndex[];
  damagedChunks: DamagedChunk[];
  /** Corrupt chunks moved to quarantine/ (the next consistency check re-sends them). */
  quarantined: number;
  affectedPoints: AffectedPoint[];
  durationMs: number;
}

export async function verifyRepository(repo: Repository, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const start = Date.now();
  const report: VerifyReport = {
    ok: true, readData: !!opts.readData, points: 0, indexes: 0, chunksChecked: 0, bytesRead: 0,
    damagedIndexes: [], damagedChunks: [], quarantined: 0, affectedPoints: [], durationMs: 0,
  };
  const good: Array<{ file: string; dataSource: string; pointId: string; diskId: string }> = [];
  const affected = new Map<string, AffectedPoint>();
  const affect = (ds: string, pointId: string, diskId: string, kind: 'chunk' | 'index') => {
    const key = `${ds}/${pointId}`;
    const a = affected.get(key) ?? { dataSource: ds, pointId, disks: [], damagedChunks: 0, damagedIndexes: 0 };
    if (!a.disks.includes(diskId)) a.disks.push(diskId);
    if (kind === 'chunk') a.damagedChunks++;
    else a.damagedIndexes++;
    affected.set(key, a);
  };

  const sources = opts.dataSource ? [opts.dataSource] : await repo.listDataSources();
  let entries = 0;
  for (const ds of sources) {
    for (const p of await repo.listPoints(ds)) {
      report.points++;
      for (const d of p.disks) {
        report.indexes++;
        const file = repo.indexPath(ds, p.pointId, d.diskId);
        const damage = (problem: string) => {
          report.damagedIndexes.push({ dataSource: ds, pointId: p.pointId, diskId: d.diskId, problem });
          affect(ds, p.pointId, d.diskId, 'index');
        };
        try {
          const { header, actual, ok } = await checkIndex(file);
          if (!ok) damage(`checksum mismatch: content hashes to ${actual}, header says ${header.checksum}`);
          else if (header.checksum !== d.indexDigest) damage(`index digest ${header.checksum} differs from the manifest's ${d.indexDigest}`);
          else if (header.virtualSize !== d.virtualSize || header.chunkSize !== d.chunkSize) damage('size or chunk size differs from the manifest');
          else {
            good.push({ file, dataSource: ds, pointId: p.pointId, diskId: d.diskId });
            entries += header.count;
          }
        } catch (err) {
          damage(isNotFound(err) ? 'index file missing' : (err as Error).message);
        }
      }
    }
  }

  const budget = opts.memoryBudgetEntries ?? 1_000_000;
  let passes = 1;
  while (passes < 4096 && entries / passes > budget) passes *= 2;
  const width = 65536 / passes;
  const damaged = new Map<string, DamagedChunk>();
  for (let p = 0; p < passes; p++) {
    const from = p * width;
    const to = from + width;
    const wanted = new Set<string>();
    for (const g of good) {
      for await (const { slots } of readSlots(g.file)) {
        forEachNonZeroSlot(slots, (o) => {
          const prefix = slots.readUInt16BE(o);
          if (prefix >= from && prefix < to) wanted.add(slots.toString('hex', o, o + DIGEST_SIZE));
        });
      }
    }
    const list = [...wanted];
    wanted.clear();
    let next = 0;
    const worker = async () => {
      while (next < list.length) {
        const digest = list[next++];
        report.chunksChecked++;
        try {
          if (opts.readData) {
            const raw = await repo.chunks.read(digest);
            report.bytesRead += raw.length;
          } else {
            const size = await repo.chunks.storedSize(digest);
            if (size === undefined) throw new RepositoryError('NOT_FOUND', 'missing');
            if (size <= CHUNK_HEADER_SIZE) throw new RepositoryError('CORRUPT', `file of ${size} bytes is shorter than a chunk`);
          }
        } catch (err) {
          const e = err as RepositoryError;
          damaged.set(digest, { digest, problem: e.code === 'NOT_FOUND' ? 'missing' : 'corrupt', detail: e.message });
          // A corrupt chunk is set aside so that it reads as missing: the next consistency check
          // of a data source that has it re-sends it from the source, repairing every point.
          if (opts.quarantine && e.code !== 'NOT_FOUND') {
            const q = path.join(repo.root, 'quarantine');
            await fs.mkdir(q, { recursive: true });
            await fs.rename(repo.chunks.pathOf(digest), path.join(q, `${digest}.${Date.now()}`)).then(
              () => report.quarantined++,
              () => undefined,
            );
          }
        }
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency ?? 8 }, worker));
  }
  report.damagedChunks = [...damaged.values()];

  if (damaged.size > 0) {
    // Which points use the damaged chunks: one more pass over the indexes, with the small set.
    const bad = new Set(damaged.keys());
    for (const g of good) {
      for await (const { slots } of readSlots(g.file)) {
        forEachNonZeroSlot(slots, (o) => {
          if (bad.has(slots.toString('hex', o, o + DIGEST_SIZE))) affect(g.dataSource, g.pointId, g.diskId, 'chunk');
        });
      }
    }
  }
  report.affectedPoints = [...affected.values()].sort((a, b) => (a.dataSource + a.pointId).localeCompare(b.dataSource + b.pointId));
  report.ok = report.damagedIndexes.length === 0 && report.damagedChunks.length === 0;
  report.durationMs = Date.now() - start;
  repo.logger?.info({ ok: report.ok, points: report.points, chunksChecked: report.chunksChecked, damagedChunks: report.damagedChunks.length, damagedIndexes: report.damagedIndexes.length }, 'verify done');
  return report;
}
