import { VhdxError } from './errors';
import { LOG_SECTOR } from './file';
import { Disk, intersectRanges } from './disk';
import { ITEM, METADATA_TABLE_SIZE } from './metadata';
import { encodeParentLocator } from './parent-locator';
import { newGuid, readGuid } from './guid';

const COPY_CHUNK = 8 * 1024 * 1024;

export interface MergeOptions {
  /** Called after each chunk reaches the parent (for heartbeats); throwing aborts the merge, which can be run again. */
  onProgress?: (bytesMerged: number, bytesTotal: number) => void;
}

/**
 * Merge a differencing disk into its parent — what releasing a checkpoint does — after which the
 * child can be deleted. Crash-safe and repeatable:
 *  1. pick the parent's next DataWriteGuid G and record it in the child as parent_linkage2 (one
 *     log transaction in the child), so the child still opens whether or not the parent changed;
 *  2. copy the child's own sectors into the parent through the parent's logged writes, with the
 *     parent's DataWriteGuid becoming G at its first write.
 * A crash anywhere leaves the child readable with the same contents (its sectors win over a
 * partly merged parent), and running the merge again finishes it.
 */
export async function mergeDifferencingIntoParent(childPath: string, opts: MergeOptions = {}): Promise<void> {
  const next = newGuid();
  const writableChild = await Disk.open(childPath, { writable: true, replayLog: true }, []);
  try {
    if (writableChild.kind !== 'differencing' || !writableChild.parent) throw new VhdxError(childPath, 'not a differencing disk; nothing to merge');
    await recordNextLinkage(writableChild, writableChild.parent.dataWriteGuid, next);
  } finally {
    await writableChild.close();
  }
  const child = await Disk.open(childPath, { replayLog: true }, []);
  try {
    const parentPath = child.parent!.path;
    const parent = await Disk.open(parentPath, { writable: true, replayLog: true, nextDataWriteGuid: next }, []);
    try {
      const { data, zeros } = await child.mergeSource();
      // Blocks the child declared zero only matter where the parent holds data.
      const zeroed = intersectRanges(await parent.allocatedRanges(), zeros);
      const total = [...data, ...zeroed].reduce((s, r) => s + r.length, 0);
      let merged = 0;
      for (const [ranges, fromChild] of [[data, true], [zeroed, false]] as const) {
        for (const r of ranges) {
          for (let o = r.offset; o < r.offset + r.length; o += COPY_CHUNK) {
            const n = Math.min(COPY_CHUNK, r.offset + r.length - o);
            await parent.write(o, fromChild ? await child.read(o, n) : Buffer.alloc(n));
            merged += n;
            opts.onProgress?.(merged, total);
          }
        }
      }
      await parent.flush();
    } finally {
      await parent.close();
    }
  } finally {
    await child.close();
  }
}

/** Rewrite the child's parent locator with parent_linkage = current, parent_linkage2 = next, through its log. */
async function recordNextLinkage(child: Disk, current: string, next: string): Promise<void> {
  const file = child.vhdxFile;
  const region = child.regionTable.metadata;
  const table = await file.readStruct(region.fileOffset, METADATA_TABLE_SIZE, 'metadata table');
  const count = Math.min(table.readUInt16LE(10), 2047);
  let entry = -1;
  let end = METADATA_TABLE_SIZE;
  for (let i = 0; i < count; i++) {
    const e = 32 + i * 32;
    if (readGuid(table, e) === ITEM.parentLocator) entry = e;
    end = Math.max(end, table.readUInt32LE(e + 16) + table.readUInt32LE(e + 20));
  }
  if (entry < 0) file.fail('differencing disk has no parent locator');
  const entries = [...child.parentLocator!.entries()].filter(([k]) => k !== 'parent_linkage' && k !== 'parent_linkage2');
  const item = encodeParentLocator([['parent_linkage', `{${current}}`], ['parent_linkage2', `{${next}}`], ...entries]);
  // The new item goes past every existing item (reusing the old place would need it to be no longer).
  let at = Math.ceil(end / LOG_SECTOR) * LOG_SECTOR;
  if (at + item.length > region.length) {
    const oldOffset = table.readUInt32LE(entry + 16);
    const oldLength = table.readUInt32LE(entry + 20);
    if (item.length > oldLength) file.fail('no room in the metadata region for the rewritten parent locator');
    at = oldOffset;
  }
  const sectors = new Map<number, Buffer>();
  const firstSector = Math.floor(at / LOG_SECTOR) * LOG_SECTOR;
  const span = await file.readStruct(region.fileOffset + firstSector, Math.ceil((at + item.length - firstSector) / LOG_SECTOR) * LOG_SECTOR, 'metadata item');
  item.copy(span, at - firstSector);
  for (let o = 0; o < span.length; o += LOG_SECTOR) sectors.set(region.fileOffset + firstSector + o, Buffer.from(span.subarray(o, o + LOG_SECTOR)));
  const tableSector = Math.floor(entry / LOG_SECTOR) * LOG_SECTOR;
  const t = Buffer.from(table.subarray(tableSector, tableSector + LOG_SECTOR));
  t.writeUInt32LE(at, entry - tableSector + 16);
  t.writeUInt32LE(item.length, entry - tableSector + 20);
  sectors.set(region.fileOffset + tableSector, t);
  await child.commitMetadata(sectors);
}
