// `hvprotect files volumes|ls|restore` and `restore --volume`: item-level recovery from any point,
// run here over the storage API (admin token) — only what is asked for is read (recovery/items.ts).
import path from 'node:path';
import type { Command } from 'commander';
import type { GuestEntry } from '../guestfs';
import { GuestFsError } from '../guestfs';
import { ItemRecoveryError, fileSystemOf, findVolume, listItems, openPoint, parseItem, restoreItem, restoreVolume, type ItemRestoreReport, type OpenPoint } from '../recovery/items';
import { adminStorage, type AdminOptions } from './admin';
import { UsageError } from './errors';
import { bytes, out, table } from './format';

/** Runs `fn` on an open point, reports what was fetched (--stats), and turns reader errors into plain ones. */
async function withPoint<T>(o: AdminOptions & { rp?: string; stats?: boolean }, dataSource: string, fn: (p: OpenPoint) => Promise<T>): Promise<T> {
  let p: OpenPoint;
  try {
    p = await openPoint(adminStorage(o), dataSource, o.rp);
  } catch (err) {
    if (err instanceof ItemRecoveryError) throw new UsageError(err.message);
    throw err;
  }
  try {
    return await fn(p);
  } catch (err) {
    if (err instanceof ItemRecoveryError) throw new UsageError(err.message);
    if (err instanceof GuestFsError) throw new Error(err.message);
    throw err;
  } finally {
    await p.close();
    if (o.stats) {
      const f = p.fetched();
      process.stderr.write(`fetched ${bytes(f.bytes)} (${f.chunks} chunks) of point ${p.point.pointId}'s ${bytes(f.diskBytes)} of disks (${((f.bytes / Math.max(1, f.diskBytes)) * 100).toFixed(3)}%)\n`);
    }
  }
}

const entryJson = (e: GuestEntry) => ({
  path: e.path, type: e.type, size: e.size, links: e.links,
  mtime: e.mtime?.toISOString(), atime: e.atime?.toISOString(), ctime: e.ctime?.toISOString(), created: e.created?.toISOString(),
  ...(e.target !== undefined ? { target: e.target } : {}), ...(e.unreadable ? { unreadable: e.unreadable } : {}),
});

export function registerFileCommands(program: Command, helpers: { addAdminOptions: (c: Command) => Command; dataSourceFor: (vm: string) => Promise<string> }): void {
  const { addAdminOptions, dataSourceFor } = helpers;
  const files = program.command('files').description('browse and restore files, folders and volumes of a recovery point without restoring its disks');

  addAdminOptions(
    files.command('volumes').argument('<vm>', 'VM name, id or data source').description('the volumes of a point: disk, partition, file system, label, size')
      .option('--rp <id>', 'recovery point id (default the newest)').option('--stats', 'report the bytes fetched on stderr', false).option('--json', 'print JSON', false)
      .addHelpText('after', '\nExamples:\n  hvprotect files volumes web01\n  hvprotect files volumes web01 --rp 20261124T020000.000Z --json\n'),
  ).action(async (vm: string, o) => {
    const rows = await withPoint(o, await dataSourceFor(vm), async (p) =>
      p.volumes.map((v) => ({ volume: v.name, disk: v.diskId, partition: v.partition?.number ?? 0, fileSystem: v.fileSystem?.type ?? null, label: v.fileSystem?.label ?? null, size: v.size, ...(v.note ? { note: v.note } : {}) })),
    );
    out(o.json, rows, () => table(rows.map((r) => ({ ...r, fileSystem: r.fileSystem ?? '-', size: bytes(r.size) })), ['volume', 'disk', 'partition', 'fileSystem', 'label', 'size', 'note']));
  });

  addAdminOptions(
    files.command('ls').argument('<vm>', 'VM name, id or data source').argument('<item>', 'VOLUME:PATH (VOLUME = <diskId>p<N> or the label)').description('list a folder (or one file) of a point')
      .option('--rp <id>', 'recovery point id (default the newest)').option('--recursive', 'the whole tree below', false).option('--stats', 'report the bytes fetched on stderr', false).option('--json', 'print a JSON array, one object per entry', false)
      .addHelpText('after', '\nExamples:\n  hvprotect files ls web01 scsi0-0p2:/Users\n  hvprotect files ls web01 DATA:/ --recursive --json\n'),
  ).action(async (vm: string, item: string, o) => {
    const { volume, path: guestPath } = parseItem(item);
    const entries = await withPoint(o, await dataSourceFor(vm), async (p) => listItems(fileSystemOf(findVolume(p, volume)), guestPath, o.recursive));
    const rows = entries.map(entryJson);
    out(o.json, rows, () => table(rows.map((r) => ({ ...r, size: r.type === 'dir' ? '' : String(r.size), mtime: r.mtime ?? '' })), ['type', 'size', 'links', 'mtime', 'path']));
  });

  addAdminOptions(
    files.command('restore').argument('<vm>', 'VM name, id or data source').argument('<items...>', 'VOLUME:PATH of files or folders').description('restore files and whole folders (contents and modification times) into a folder here')
      .requiredOption('--to <dir>', 'folder to restore into (nothing is written outside it)').option('--rp <id>', 'recovery point id (default the newest)').option('--stats', 'report the bytes fetched on stderr', false).option('--json', 'print JSON', false)
      .addHelpText('after', '\nExamples:\n  hvprotect files restore web01 scsi0-0p2:/Users/alice/report.docx --to /srv/restore\n  hvprotect files restore web01 DATA:/projects DATA:/notes.txt --to ./out --rp 20261124T020000.000Z\n'),
  ).action(async (vm: string, items: string[], o) => {
    const parsed = items.map(parseItem);
    const report: ItemRestoreReport = { restored: [], skipped: [] };
    await withPoint(o, await dataSourceFor(vm), async (p) => {
      for (const it of parsed) await restoreItem(fileSystemOf(findVolume(p, it.volume)), it.path, path.resolve(o.to), report);
    });
    out(o.json, report, () =>
      `restored ${report.restored.filter((r) => r.type === 'file').length} files, ${report.restored.filter((r) => r.type === 'dir').length} folders (${bytes(report.restored.reduce((s, r) => s + r.bytes, 0))}) into ${path.resolve(o.to)}\n` +
      report.skipped.map((s) => `  not restored: ${s.path}: ${s.reason}\n`).join(''),
    );
    if (report.skipped.length) process.exitCode = 1;
  });
}

/** `restore VM --volume VOLUME --to DIR [--format raw|vhdx]`: one volume as a disk image file here. */
export async function restoreVolumeCommand(dataSource: string, o: AdminOptions & { rp?: string; volume: string; to: string; format: 'raw' | 'vhdx'; stats?: boolean }): Promise<{ volume: string; path: string; bytesWritten: number; pointId: string }> {
  return withPoint(o, dataSource, async (p) => {
    const v = findVolume(p, o.volume);
    const file = path.join(path.resolve(o.to), `${v.name}.${o.format}`);
    const { mkdir } = await import('node:fs/promises');
    await mkdir(path.resolve(o.to), { recursive: true });
    const r = await restoreVolume(v, file, o.format);
    return { volume: v.name, path: file, bytesWritten: r.bytes, pointId: p.point.pointId };
  });
}
