// Garbage collection of chunks no recovery point references.
//
// Safety against backups in progress (marks + a time cutoff, as Proxmox Backup Server does with
// atime): a backup session is a lease file with its start time. The sweep removes a chunk only
// when (1) no index of a committed point or of a live session references it, (2) its mtime is
// older than the cutoff = min(GC start, oldest live session start) - grace, and (3) it was not
// touched since GC began. Every use of an existing chunk (a "missing?" answer that says present,
// an upload that deduplicates, an index that references it) bumps its mtime and shields it from
// the running GC, so a chunk a session was told exists cannot vanish before the session commits.
// We chose this over a global lock because backups never wait for GC, and GC never waits for a
// backup: a lease that lapses (crashed agent) only delays the collection of its chunks.
//
// Memory is bounded regardless of repository size: the digest space is cut into 2^k ranges by
// the first 16 bits, sized so one range's referenced digests fit `memoryBudgetEntries`; every pass
// re-reads the indexes (sequential, 32 bytes per chunk) and sweeps only that range's folders.
import { promises as fs } from 'node:fs';
import { RepositoryError, isNotFound } from './errors';
import { DIGEST_SIZE, INDEX_HEADER_SIZE, forEachNonZeroSlot, readSlots } from './fixed-index';
import type { Repository } from './repository';

export interface GcOptions {
  /** Referenced digests held in memory per pass (~100 bytes each). Default 1,000,000. */
  memoryBudgetEntries?: number;
  /** Margin below the cutoff for clock and timestamp granularity. Default 60 s. */
  graceMs?: number;
}

export interface GcReport {
  startedAt: string;
  cutoff: string;
  passes: number;
  indexFiles: number;
  chunksSeen: number;
  removedChunks: number;
  removedBytes: number;
  /** Unreferenced but newer than the cutoff (uploads of sessions in progress). */
  keptRecent: number;
  removedTempFiles: number;
  durationMs: number;
}


export async function collectGarbage(repo: Repository, opts: GcOptions = {}): Promise<GcReport> {
  return repo.exclusiveGc(async () => {
    const start = Date.now();
    await repo.removeExpired();
    const sessions = await repo.listSessions();
    const oldestSession = Math.min(start, ...sessions.map((s) => Date.parse(s.startedAt)));
    const cutoff = oldestSession - (opts.graceMs ?? 60_000);
    const budget = opts.memoryBudgetEntries ?? 1_000_000;

    const files = await repo.listIndexFiles();
    let entries = 0;
    for (const f of files) {
      const st = await fs.stat(f.file).catch(() => undefined);
      if (st) entries += Math.max(0, (st.size - INDEX_HEADER_SIZE) / DIGEST_SIZE);
    }
    let passes = 1;
    while (passes < 4096 && entries / passes > budget) passes *= 2;

    const report: GcReport = {
      startedAt: new Date(start).toISOString(), cutoff: new Date(cutoff).toISOString(), passes, indexFiles: files.length,
      chunksSeen: 0, removedChunks: 0, removedBytes: 0, keptRecent: 0, removedTempFiles: 0, durationMs: 0,
    };
    const width = 65536 / passes;
    for (let p = 0; p < passes; p++) {
      const from = p * width;
      const to = from + width;
      const marked = new Set<string>();
      const mark = async (file: string): Promise<void> => {
        try {
          for await (const { slots } of readSlots(file)) {
            forEachNonZeroSlot(slots, (o) => {
              const prefix = slots.readUInt16BE(o);
              if (prefix >= from && prefix < to) marked.add(slots.toString('latin1', o, o + DIGEST_SIZE));
            });
          }
        } catch (err) {
          // Deleted, or moved from a session into a point, since the listing: the re-listing
          // below picks up the new place.
          if (isNotFound(err)) return;
          throw new RepositoryError('CORRUPT', `garbage collection stopped: cannot read index ${file}: ${(err as Error).message}`, 'run verify and repair or delete the damaged point; GC cannot tell which chunks it needs');
        }
      };
      const seenFiles = new Set<string>();
      for (const f of files) {
        seenFiles.add(f.file);
        await mark(f.file);
      }
      // Points committed while we read: mark their indexes too, until the listing is stable.
      for (;;) {
        const fresh = (await repo.listIndexFiles()).filter((f) => !seenFiles.has(f.file));
        if (fresh.length === 0) break;
        for (const f of fresh) {
          seenFiles.add(f.file);
          await mark(f.file);
        }
      }
      for await (const ent of repo.chunks.listPrefix(from, to)) {
        const st = await fs.stat(ent.file).catch(() => undefined);
        if (!st) continue;
        if (ent.isTemp) {
          if (st.mtimeMs < start - 3_600_000) {
            await fs.rm(ent.file, { force: true });
            report.removedTempFiles++;
          }
          continue;
        }
        report.chunksSeen++;
        if (marked.has(Buffer.from(ent.name, 'hex').toString('latin1'))) continue;
        if (st.mtimeMs >= cutoff) {
          report.keptRecent++;
          continue;
        }
        if (await repo.chunks.removeIfUnused(ent.name)) {
          report.removedChunks++;
          report.removedBytes += st.size;
        }
      }
    }
    report.durationMs = Date.now() - start;
    repo.logger?.info(report, 'garbage collection done');
    return report;
  });
}
