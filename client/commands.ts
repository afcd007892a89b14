// The administrator's commands: protect, backup, status, rp, restore, verify, check,
// shadowstorage, shadows, gc, token. Temporal for jobs; the storage API (admin token) for the repository.
import { Command, InvalidArgumentError, Option } from 'commander';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { connectClient, loadTemporalSettings } from '../temporal/connection';
import { ENCRYPTED_MARKER } from '../temporal/search-attribute-redaction';
import { serverTaskQueue } from '../temporal/task-queues';
import { type BackupProgress, type BackupVmResult } from '../workflows/backup-vm';
import { readBackupProgress } from './backup-progress';
import type { RestoreTarget, RestoreVmResult } from '../workflows/restore-vm';
import { parseShadowStorageSize } from '../repository';
import { adminStorage } from './admin';
import { bytes, out, table } from './format';
import {
  dataSourceOf,
  describeProtection,
  JobRefused,
  listProtections,
  protectionStatuses,
  moveProtection,
  startJob,
  parseTimes,
  protectVm,
  removeProtection,
  resolveVm,
  setProtectionPaused,
  setProtectionPolicy,
  startBackupNow,
} from './protection';
import { UsageError } from './errors';
import { DEFAULT_RPO_MS } from '../protection/status';
import { registerFileCommands, restoreVolumeCommand } from './files';
import { registerGroupCommands } from './group-commands';
import { listServers } from './protection';
import { randomUUID } from 'node:crypto';
import type { RecoveryPointSummary } from '../activities/server/restore';

async function withClient<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const client = await connectClient(loadTemporalSettings());
  try {
    return await fn(client);
  } finally {
    await client.connection.close();
  }
}

export function positiveInt(value: string): number {
  if (!/^[1-9]\d{0,8}$/.test(value)) throw new InvalidArgumentError('a whole number of 1 or more.');
  return Number(value);
}

function sizeArg(value: string): string {
  try {
    parseShadowStorageSize(value);
  } catch (err) {
    const e = err as Error & { hint?: string };
    throw new InvalidArgumentError(`${e.message}${e.hint ? `: ${e.hint}` : ''}`);
  }
  return value;
}

/** The Web UI for links: $HVPROTECT_WEB_UI, else the dev server's convention (gRPC port + 1000). */
export function webUiBase(): string {
  if (process.env.HVPROTECT_WEB_UI) return process.env.HVPROTECT_WEB_UI.replace(/\/+$/, '');
  const s = loadTemporalSettings();
  const m = /^(.*):(\d+)$/.exec(s.address);
  const host = m ? m[1] : 'localhost';
  const port = m ? Number(m[2]) + 1000 : 8233;
  return `http://${host}:${port}`;
}

export function workflowLink(workflowId: string): string {
  const ns = loadTemporalSettings().namespace;
  return `${webUiBase()}/namespaces/${encodeURIComponent(ns)}/workflows/${encodeURIComponent(workflowId)}`;
}

export function addAdminOptions(cmd: Command): Command {
  return cmd
    .option('--server-dir <dir>', "the protection server's state folder (admin token, storage API address)")
    .option('--storage-url <url>', 'the storage API (default from --server-dir)')
    .option('--admin-token-file <file>', 'admin token file (default <server-dir>/admin.token)')
    .option('--storage-ca <file>', 'CA bundle (PEM) of an https storage API (default $HVPROTECT_STORAGE_CA)')
    .option('--storage-cert <file>', 'client certificate (PEM) when the server requires one (default $HVPROTECT_STORAGE_CERT)')
    .option('--storage-key <file>', 'its key (PEM) (default $HVPROTECT_STORAGE_KEY)');
}

/** A VM name, VM id or data source id → the data source id (asks Temporal's schedules; else as given). */
export async function dataSourceFor(vm: string): Promise<string> {
  try {
    return await withClient(async (c) => (await dataSourceOf(c, vm)).dataSource);
  } catch (err) {
    if ((err as Error).name === 'TemporalUnreachable') return vm;
    // Not protected (any more): its recovery points may still be there under that name.
    if (err instanceof UsageError && /^[a-z0-9][a-z0-9._-]*$/i.test(vm)) return vm;
    throw err;
  }
}

function renderProgress(p: BackupProgress, tty: boolean): string {
  const total = p.disks.reduce((s, d) => s + d.virtualSize, 0);
  const pos = p.disks.reduce((s, d) => s + (d.done ? d.virtualSize : d.position), 0);
  const pct = total ? Math.min(100, Math.floor((100 * pos) / total)) : 0;
  const width = 24;
  const bar = tty ? `[${'#'.repeat(Math.round((pct * width) / 100)).padEnd(width, '.')}] ` : '';
  return `${bar}${String(pct).padStart(3)}%  read ${bytes(p.bytesRead)}  sent ${bytes(p.bytesSent)}  ${bytes(p.rate)}/s  ${p.mode ?? ''} ${p.kind ?? ''}  ${p.step}`;
}

/** Waits for a backup, drawing a progress bar on a terminal and plain lines otherwise. */
async function followBackup(handle: WorkflowHandle, json: boolean): Promise<BackupVmResult> {
  const tty = !json && process.stderr.isTTY === true;
  let lastLine = '';
  let done = false;
  const result = handle.result().finally(() => (done = true)) as Promise<BackupVmResult>;
  result.catch(() => undefined);
  while (!done) {
    try {
      const p = await readBackupProgress(handle);
      const line = renderProgress(p, tty);
      if (tty) process.stderr.write(`\r${line.slice(0, (process.stderr.columns ?? 120) - 1).padEnd(Math.min(lastLine.length, (process.stderr.columns ?? 120) - 1))}`);
      else if (!json && p.step !== lastLine.split('  ').pop()) process.stderr.write(`${line}\n`);
      lastLine = line;
    } catch {
      // Query can fail between workflow tasks; the next poll will do.
    }
    await Promise.race([result.catch(() => undefined), new Promise((r) => setTimeout(r, tty ? 300 : 1000))]);
  }
  if (tty) process.stderr.write('\n');
  try {
    return await result;
  } catch (err) {
    const cause = (err as { cause?: { message?: string; cause?: { message?: string } } }).cause;
    throw new Error(`backup ${handle.workflowId} failed: ${cause?.cause?.message ?? cause?.message ?? (err as Error).message} (${workflowLink(handle.workflowId)})`);
  }
}

/** Recovery points of a data source on every server that keeps (or kept) a chain of it. */
async function recoveryPointsOf(client: Client, dataSource: string): Promise<RecoveryPointSummary[]> {
  const info = await describeProtection(client, dataSource).catch(() => undefined);
  const servers = info ? [...new Set(info.chains.map((ch) => ch.server).concat(info.server))] : (await listServers(client)).map((s) => s.id);
  const lists = await Promise.all(
    servers.map((id) =>
      client.workflow.execute('recoveryPoints', {
        taskQueue: serverTaskQueue(id),
        workflowId: `rp-list/${dataSource}/${id}/${randomUUID().slice(0, 8)}`,
        args: [{ dataSource }],
        workflowExecutionTimeout: '30 seconds',
      }) as Promise<RecoveryPointSummary[]>,
    ),
  );
  return lists.flat().sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

export function registerCommands(program: Command): void {
  // ---- protect -------------------------------------------------------------------------------
  const protect = program.command('protect').description('Protect VMs: a schedule of express full backups per VM, with retention');
  addAdminOptions(
    protect
      .command('add')
      .argument('<vm>', 'VM name or id')
      .description('protect a VM: express full backups on a schedule, first one at the next slot')
      .option('--at <times>', 'express full times of day, HH:MM[,HH:MM…] (default 02:00)')
      .option('--every <hours>', 'or every N hours instead of fixed times', positiveInt)
      .option('--tz <zone>', 'the time zone of --at, an IANA name such as Europe/Berlin (default the protection server\'s zone)')
      .option('--rpo <hours>', 'recovery point objective: no point for longer is WARNING, twice as long CRITICAL (default the longest gap between runs + 1 h)', positiveInt)
      .option('--retention-days <days>', 'keep recovery points this many days', positiveInt)
      .option('--max-points <n>', 'keep at most this many recovery points (DPM max 448)', positiveInt)
      .option('--maxsize <size>', 'shadow storage limit: 20GB, 15% or UNBOUNDED', sizeArg)
      .option('--no-offline', 'fail rather than save or pause a VM that cannot be backed up online')
      .addOption(new Option('--offline-method <m>', 'how to make a running VM quiet for an offline backup').choices(['save', 'pause']).default('save'))
      .option('--replica', 'protect the Hyper-V Replica copy on the replica server', false)
      .option('--data-source <id>', 'data source id (default from the VM name)')
      .option('--server <id>', 'the protection server that owns it (default: the only one, else the one owning fewest)')
      .option('--backup-now', 'start the first backup now', false)
      .option('--json', 'print JSON', false)
      .addHelpText('after', '\nExamples:\n  hvprotect protect add web01 --at 02:00,14:00 --tz Europe/Berlin --retention-days 14\n  hvprotect protect add app-linux01 --every 6 --offline-method pause --backup-now\n'),
  ).action(async (vmArg: string, o) => {
    if (o.at && o.every) throw new UsageError('give either --at or --every, not both');
    const at = o.at ? parseTimes(o.at) : undefined;
    const info = await withClient(async (client) => {
      const vm = await resolveVm(client, vmArg, o.server);
      const p = await protectVm(client, {
        vm,
        server: o.server,
        dataSource: o.dataSource,
        schedule: { at, everyHours: o.every, timezone: o.tz, rpoMs: o.rpo ? o.rpo * 3_600_000 : undefined },
        allowOffline: o.offline,
        offlineMethod: o.offlineMethod,
        role: o.replica ? 'replica' : undefined,
      });
      if (o.retentionDays || o.maxPoints || o.maxsize) {
        const storage = adminStorage(o);
        await storage.addShadowStorage(p.dataSource, o.maxsize).catch(async () => undefined);
        await storage.resizeShadowStorage(p.dataSource, { maxSize: o.maxsize, maxPoints: o.maxPoints, retentionRangeDays: o.retentionDays });
      }
      let firstBackup: string | undefined;
      if (o.backupNow) firstBackup = (await startBackupNow(client, p)).workflowId;
      return { ...p, firstBackup };
    });
    out(o.json, info, () =>
      `protected ${info.vm} (${info.vmId}) as ${info.dataSource} by ${info.server}: ${info.spec}; next ${info.nextRuns[0] ?? '-'}\n` +
      (info.firstBackup ? `first backup started: ${workflowLink(info.firstBackup)}\n` : ''),
    );
  });
  protect
    .command('list')
    .description('protected VMs, their schedules and recent runs')
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      const all = await withClient(listProtections);
      out(o.json, all, () =>
        table(
          all.map((p) => ({ datasource: p.dataSource, vm: p.vm, group: p.group ?? '-', server: p.server, schedule: p.spec, state: p.unanswered ? 'not answering' : p.running ? `${p.running.kind} running` : p.paused ? 'paused' : 'active', next: p.nextRuns[0] ?? '-', last: p.recentRuns.at(-1)?.startedAt ?? '-', 'skipped/missed': `${p.skippedRuns}/${p.missedRuns}` })),
          ['datasource', 'vm', 'group', 'server', 'schedule', 'state', 'next', 'last', 'skipped/missed'],
        ) + all.filter((p) => p.unanswered).map((p) => `${p.dataSource}: ${p.unanswered}\n`).join(''),
      );
    });
  protect
    .command('set')
    .argument('<vm>', 'VM name, id or data source')
    .description("change a protection's RPO or offline policy (a VM in a group follows the group: `group set`)")
    .option('--rpo <hours>', 'recovery point objective: no point for longer is WARNING, twice as long CRITICAL', positiveInt)
    .option('--offline', 'allow saving or pausing a VM that cannot be backed up online')
    .option('--no-offline', 'fail rather than save or pause a VM that cannot be backed up online')
    .addOption(new Option('--offline-method <m>', 'how to make a running VM quiet for an offline backup').choices(['save', 'pause']))
    .option('--json', 'print JSON', false)
    .action(async (vm: string, o) => {
      if (o.rpo === undefined && o.offline === undefined && o.offlineMethod === undefined) throw new UsageError('nothing to change: give --rpo, --offline, --no-offline or --offline-method');
      const state = await withClient(async (c) => {
        const p = await dataSourceOf(c, vm);
        if (p.group) throw new UsageError(`${p.dataSource} is protected by group ${p.group}, whose policy it follows: change that (\`hvprotect group set ${p.group} …\`)`);
        return setProtectionPolicy(c, p.dataSource, { rpoMs: o.rpo !== undefined ? o.rpo * 3_600_000 : undefined, allowOffline: o.offline, offlineMethod: o.offlineMethod });
      });
      const policy = state.backup.policy ?? {};
      out(o.json, { dataSource: state.dataSource, rpoMs: state.rpoMs, allowOffline: policy.allowOffline ?? true, offlineMethod: policy.offlineMethod ?? 'save' }, () =>
        `${state.dataSource}: RPO ${Math.round((state.rpoMs ?? DEFAULT_RPO_MS) / 3_600_000)} h; ` +
        `${policy.allowOffline === false ? 'never offline' : `offline allowed (${policy.offlineMethod ?? 'save'})`}; from the next backup on\n`,
      );
    });
  for (const [name, paused] of [['pause', true], ['resume', false]] as const) {
    protect
      .command(name)
      .argument('<vm>', 'VM name, id or data source')
      .description(`${name} the protection (its schedule) of a VM`)
      .option('--json', 'print JSON', false)
      .action(async (vm: string, o) => {
        const p = await withClient(async (c) => setProtectionPaused(c, (await dataSourceOf(c, vm)).dataSource, paused, `${name}d from the CLI`));
        out(o.json, p, () => `${p.dataSource}: ${p.paused ? 'paused' : 'active'}\n`);
      });
  }
  protect
    .command('remove')
    .argument('<vm>', 'VM name, id or data source')
    .description('stop protecting a VM (its recovery points stay until retention removes them)')
    .action(async (vm: string) => {
      const ds = await withClient(async (c) => {
        let dataSource: string;
        try {
          dataSource = (await dataSourceOf(c, vm)).dataSource;
        } catch (err) {
          if (!(err instanceof UsageError)) throw err;
          // A remove cut short leaves the schedule of an ended protection: named by its data source,
          // removeProtection takes it away; with nothing there either, the lookup's refusal says why.
          await removeProtection(c, vm).catch((e) => {
            throw e instanceof UsageError ? err : e;
          });
          return vm;
        }
        await removeProtection(c, dataSource);
        return dataSource;
      });
      process.stdout.write(`removed protection of ${ds}; its recovery points are kept\n`);
    });

  protect
    .command('move')
    .argument('<vm>', 'VM name, id or data source')
    .requiredOption('--to <server>', 'the protection server to own it from now on')
    .description("hand a VM's protection to another server (DPM's switch protection): its next backup starts a chain there")
    .option('--json', 'print JSON', false)
    .addHelpText('after', '\nExample:\n  hvprotect protect move web01 --to dpm02\n')
    .action(async (vm: string, o) => {
      const p = await withClient(async (c) => moveProtection(c, (await dataSourceOf(c, vm)).dataSource, o.to));
      const old = p.chains.filter((c) => c.server !== p.server);
      out(o.json, p, () =>
        `${p.dataSource} is now protected by ${p.server}. Its next backup there is an initial replica: the new chain is not seeded from the old one, ` +
        'because the two servers keep separate repositories and copying a chain between them is no cheaper than one full read of what the VM has allocated (an express full needs the base in the same repository).\n' +
        (old.length ? `The old chain stays restorable on ${[...new Set(old.map((c) => c.server))].join(', ')} until its retention lets it go (\`hvprotect rp list ${p.vm}\`).\n` : ''),
      );
    });

  // ---- backup now, check, status ----------------------------------------------------------------
  for (const [name, kind, what] of [
    ['backup', 'auto', 'back up a protected VM now (express full, or initial replica the first time)'],
    ['check', 'consistency-check', 'consistency check now: read every block, send only what differs'],
  ] as const) {
    program
      .command(name)
      .argument('<vm>', 'VM name, id or data source')
      .description(what)
      .option('--wait', 'wait for the end, with a progress bar on a terminal', false)
      .option('--json', 'print JSON', false)
      .addHelpText('after', `\nExamples:\n  hvprotect ${name} web01 --wait\n  hvprotect ${name} web01 --json\n`)
      .action(async (vm: string, o) => {
        await withClient(async (c) => {
          const p = await dataSourceOf(c, vm);
          let handle: WorkflowHandle;
          try {
            handle = await startBackupNow(c, p, kind);
          } catch (err) {
            if (!(err instanceof JobRefused)) throw err;
            const running = (await describeProtection(c, p.dataSource).catch(() => undefined))?.running;
            throw new JobRefused(`${err.message}${running ? ` (${workflowLink(running.workflowId)})` : ''}`, err.type);
          }
          if (!o.wait) {
            out(o.json, { workflowId: handle.workflowId, link: workflowLink(handle.workflowId) }, () => `started ${handle.workflowId}\n  ${workflowLink(handle.workflowId)}\n`);
            return;
          }
          if (!o.json) process.stderr.write(`${handle.workflowId}\n  ${workflowLink(handle.workflowId)}\n`);
          const r = await followBackup(handle, o.json);
          out(o.json, r, () =>
            `recovery point ${r.pointId} of ${r.vmName}: ${r.kind}, ${r.mode}${r.downtimeMs !== undefined ? ` (VM paused ${r.downtimeMs} ms)` : ''} on ${r.host}; ` +
            `read ${bytes(r.disks.reduce((s, d) => s + d.bytesRead, 0))}, sent ${bytes(r.disks.reduce((s, d) => s + d.bytesSent, 0))}\n` +
            (r.modeReasons.length ? `  offline because: ${r.modeReasons.join('; ')}\n` : ''),
          );
        });
      });
  }

  program
    .command('status')
    .description('running and recent backup and restore jobs, with links into the Web UI; --protection: every protected VM against its RPO')
    .option('--limit <n>', 'how many recent jobs', positiveInt, 20)
    .option('--protection', 'the protection status of every protected VM (OK / WARNING / CRITICAL, last good point, last failure); exit 1 when one is not OK', false)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      if (o.protection) {
        const rows = await withClient((c) => protectionStatuses(c));
        out(o.json, rows, () =>
          table(
            rows.map((r) => ({
              status: r.level,
              vm: r.vm,
              server: r.server,
              'last point': r.lastGood ? `${r.lastGood.at} (${Math.round(r.lastGood.ageSeconds / 3600)} h)` : '-',
              rpo: `${Math.round(r.rpoSeconds / 3600)} h`,
              paused: r.paused ? 'paused' : '',
              why: r.reason,
            })),
            ['status', 'vm', 'server', 'last point', 'rpo', 'paused', 'why'],
          ),
        );
        if (rows.some((r) => r.level !== 'OK')) process.exitCode = 1;
        return;
      }
      const jobs = await withClient(async (c) => {
        const rows: Record<string, string>[] = [];
        for await (const wf of c.workflow.list({ query: "WorkflowType IN ('backupVm', 'restoreVm')", pageSize: o.limit })) {
          const sa = wf.typedSearchAttributes;
          rows.push({
            workflowId: wf.workflowId,
            status: wf.status.name,
            // Under a payload key BackupVm holds only a marker: the data source says which VM.
            vm: String(sa.get({ name: 'BackupVm', type: 'KEYWORD' } as never) ?? '').replace(ENCRYPTED_MARKER, `(${String(sa.get({ name: 'BackupDataSource', type: 'KEYWORD' } as never) ?? '?')})`),
            host: String(sa.get({ name: 'BackupHost', type: 'KEYWORD' } as never) ?? ''),
            server: String(sa.get({ name: 'BackupServer', type: 'KEYWORD' } as never) ?? ''),
            mode: String(sa.get({ name: 'BackupMode', type: 'KEYWORD' } as never) ?? ''),
            kind: String(sa.get({ name: 'BackupKind', type: 'KEYWORD' } as never) ?? ''),
            started: wf.startTime.toISOString(),
            link: workflowLink(wf.workflowId),
          });
          if (rows.length >= o.limit) break;
        }
        return rows;
      });
      out(o.json, jobs, () => table(jobs, ['status', 'vm', 'server', 'host', 'mode', 'kind', 'started', 'workflowId']) + (jobs[0] ? `\nWeb UI: ${webUiBase()}\n` : ''));
    });

  // ---- recovery points and restore ---------------------------------------------------------------
  const rp = program.command('rp').description('recovery points');
  rp.command('list')
    .argument('<vm>', 'VM name, id or data source')
    .description('recovery points of a VM on every server that keeps a chain of it, oldest first')
    .option('--json', 'print JSON', false)
    .action(async (vm: string, o) => {
      const points = await withClient(async (c) => recoveryPointsOf(c, await dataSourceFor(vm)));
      out(o.json, points, () =>
        table(
          points.map((p) => ({ point: p.pointId, server: p.server, created: p.createdAt, kind: p.kind, mode: p.mode, disks: p.disks, size: bytes(p.virtualSize), stored: bytes(p.storedBytes) })),
          ['point', 'server', 'created', 'kind', 'mode', 'disks', 'size', 'stored'],
        ),
      );
    });

  registerFileCommands(program, { addAdminOptions, dataSourceFor });
  registerGroupCommands(program, { withClient, positiveInt, sizeArg });

  addAdminOptions(program
    .command('restore')
    .argument('<vm>', 'VM name, id or data source')
    .description('restore a recovery point: the whole VM (original place or another host) or its disks to a folder')
    .option('--rp <id>', 'recovery point id (default the newest; `hvprotect rp list VM`)')
    .option('--original', 'to the original place (the VM must be off)')
    .option('--host <host>', 'as a VM on this host (or, with --to, the host that writes the files)')
    .option('--name <name>', 'name of the VM restored with --host')
    .option('--to <dir>', 'export the disks to this folder on --host (with --volume: here)')
    .option('--volume <volume>', 'restore one volume (<diskId>p<N> or its label) as an image file, read here over the storage API')
    .option('--stats', 'with --volume: report the bytes fetched on stderr', false)
    .addOption(new Option('--format <f>', 'disk format for --to').choices(['vhdx', 'raw']).default('vhdx'))
    .option('--json', 'print JSON', false)
    .addHelpText('after', '\nExamples:\n  hvprotect restore web01 --original\n  hvprotect restore web01 --rp 20261124T020000Z-1a2b --host hv03 --name web01-test\n  hvprotect restore web01 --host hv01 --to /srv/restore --format raw\n  hvprotect restore web01 --volume scsi0-0p2 --to /srv/restore --format raw\n'))
    .action(async (vm: string, o) => {
      if (o.volume) {
        if (!o.to || o.original || o.host) throw new UsageError('--volume needs --to DIR (a folder here) and neither --original nor --host');
        const r = await restoreVolumeCommand(await dataSourceFor(vm), o);
        return out(o.json, r, () => `restored volume ${r.volume} of point ${r.pointId} to ${r.path} (${bytes(r.bytesWritten)} written)\n`);
      }
      const targets = [o.original, o.to, o.host && !o.to].filter(Boolean).length;
      if (targets !== 1) throw new UsageError('say where to: exactly one of --original, --host H, or --to DIR (with --host H)');
      let target: RestoreTarget;
      if (o.original) target = { kind: 'original' };
      else if (o.to) {
        if (!o.host) throw new UsageError('--to DIR needs --host H: the host whose agent writes the files');
        target = { kind: 'export', host: o.host, dir: o.to, format: o.format };
      } else target = { kind: 'host', host: o.host, name: o.name, newId: true };
      const r = await withClient(async (c) => {
        const ds = (await dataSourceOf(c, vm).catch(() => ({ dataSource: vm }))).dataSource;
        // The point's server restores it: the newest point overall, or the one named.
        const points = await recoveryPointsOf(c, ds);
        const point = o.rp ? points.find((p) => p.pointId === o.rp) : points.at(-1);
        if (!point) throw new UsageError(o.rp ? `no recovery point ${o.rp} of ${ds}; \`hvprotect rp list ${vm}\` lists them` : `${ds} has no recovery point yet`);
        const input = { dataSource: ds, pointId: point.pointId, target };
        let handle: WorkflowHandle;
        if (target.kind === 'original') {
          // Through the protection: never while a backup or check of it runs.
          handle = (await startJob(c, ds, { kind: 'restore', by: 'cli', restore: input, server: point.server })).handle;
        } else {
          handle = await c.workflow.start('restoreVm', { taskQueue: serverTaskQueue(point.server), workflowId: `restore/${ds}/${new Date().toISOString()}`, args: [input] });
        }
        if (!o.json) process.stderr.write(`${handle.workflowId}\n  ${workflowLink(handle.workflowId)}\n`);
        try {
          return (await handle.result()) as RestoreVmResult;
        } catch (err) {
          const cause = (err as { cause?: { message?: string } }).cause;
          throw new Error(`restore failed: ${cause?.message ?? (err as Error).message}`);
        }
      });
      out(o.json, r, () =>
        `restored ${r.dataSource} point ${r.pointId} on ${r.host}` +
        (r.vmName ? ` as VM ${r.vmName} (${r.vmId}), off` : '') +
        `\n${r.disks.map((d) => `  ${d.diskId}: ${d.path} (${bytes(d.bytesWritten)}, ${d.chunksVerified} chunks verified)`).join('\n')}\n`,
      );
    });

  // ---- repository -------------------------------------------------------------------------------
  addAdminOptions(
    program
      .command('verify')
      .description('check the repository: every referenced chunk present, every index checksum right')
      .option('--read-data', 'also read and hash every chunk (slow, thorough)', false)
      .option('--for <vm>', 'only this VM / data source')
      .option('--json', 'print JSON', false),
  ).action(async (o) => {
    const ds = o.for ? await dataSourceFor(o.for) : undefined;
    const report = await adminStorage(o).verify({ readData: o.readData, dataSource: ds });
    out(o.json, report, () =>
      report.ok
        ? `repository OK: ${report.points} point(s), ${report.indexes} index(es), ${report.chunksChecked} chunk(s) checked` +
          `${report.readData ? `, ${bytes(report.bytesRead)} read and hashed` : ''} in ${report.durationMs} ms\n`
        : `repository DAMAGED: ${report.damagedChunks.length} chunk(s), ${report.damagedIndexes.length} index(es); affected points:\n` +
          report.affectedPoints.map((p) => `  ${JSON.stringify(p)}`).join('\n') +
          '\nA consistency check (`hvprotect check VM`) re-sends damaged chunks from the source.\n',
    );
    if (!report.ok) process.exitCode = 1;
  });

  addAdminOptions(program.command('gc').description('remove chunks no recovery point references (never races a backup)').option('--json', 'print JSON', false)).action(
    async (o) => {
      const report = await adminStorage(o).collectGarbage();
      out(o.json, report, () => `${JSON.stringify(report)}\n`);
    },
  );

  const ss = program.command('shadowstorage').description('shadow storage of data sources, as vssadmin has it');
  addAdminOptions(ss.command('list').option('--for <vm>', 'only this VM / data source').option('--json', 'print JSON', false)).action(async (o) => {
    const list = await adminStorage(o).listShadowStorage(o.for ? await dataSourceFor(o.for) : undefined);
    out(o.json, list, () =>
      table(
        list.map((u) => ({
          datasource: u.dataSource,
          used: bytes(u.usedBytes),
          allocated: bytes(u.allocatedBytes),
          maximum: u.maximumBytes === null ? 'UNBOUNDED' : `${bytes(u.maximumBytes)} (${u.maxSize})`,
          points: `${u.points}/${u.maxPoints}`,
          retention: u.retentionRangeDays ? `${u.retentionRangeDays} d` : '-',
        })),
        ['datasource', 'used', 'allocated', 'maximum', 'points', 'retention'],
      ),
    );
  });
  for (const verb of ['add', 'resize'] as const) {
    addAdminOptions(
      ss
        .command(verb)
        .requiredOption('--for <vm>', 'VM / data source')
        .option('--maxsize <size>', 'bytes (20GB), a percentage of the volume (15%) or UNBOUNDED', sizeArg)
        .option('--max-points <n>', 'most recovery points to keep (DPM max 448)', positiveInt)
        .option('--retention-days <days>', 'retention range in days', positiveInt)
        .option('--json', 'print JSON', false)
        .addHelpText('after', `\nExamples:\n  hvprotect shadowstorage ${verb} --for web01 --maxsize 20GB\n  hvprotect shadowstorage ${verb} --for web01 --maxsize 15%\n  hvprotect shadowstorage ${verb} --for web01 --maxsize UNBOUNDED\n`),
    ).action(async (o) => {
      const ds = await dataSourceFor(o.for);
      const storage = adminStorage(o);
      const r =
        verb === 'add' && !o.maxPoints && !o.retentionDays
          ? await storage.addShadowStorage(ds, o.maxsize)
          : await (async () => {
              if (verb === 'add') await storage.addShadowStorage(ds, o.maxsize);
              if (verb === 'resize' && !o.maxsize && !o.maxPoints && !o.retentionDays) throw new UsageError('resize needs --maxsize, --max-points or --retention-days');
              return storage.resizeShadowStorage(ds, { maxSize: o.maxsize, maxPoints: o.maxPoints, retentionRangeDays: o.retentionDays });
            })();
      out(o.json, r, () => `${JSON.stringify(r)}\n`);
    });
  }
  const shadows = program.command('shadows').description('recovery points as shadow copies');
  addAdminOptions(
    shadows
      .command('delete')
      .requiredOption('--for <vm>', 'VM / data source')
      .requiredOption('--oldest', 'delete the oldest recovery point (never the newest)')
      .option('--json', 'print JSON', false),
  ).action(async (o) => {
    const r = await adminStorage(o).deleteOldestPoint(await dataSourceFor(o.for));
    out(o.json, r, () => `deleted ${r.pointId} of ${r.dataSource} (${bytes(r.freedBytes)} freed)\n`);
  });

  const token = program.command('token').description('agent tokens for the storage API (stored hashed)');
  addAdminOptions(
    token
      .command('issue')
      .requiredOption('--host <name>', 'the agent host')
      .option('--admin', 'an admin token instead', false)
      .option('--rotate', 'replace a live token: the old one stays valid until the agent first uses the new one', false),
  ).action(async (o) => {
    process.stdout.write(`${await adminStorage(o).issueToken(o.host, o.admin ? 'admin' : 'agent', { rotate: o.rotate })}\n`);
  });
  addAdminOptions(token.command('revoke').argument('<name>', 'host or admin name')).action(async (name: string, o) => {
    await adminStorage(o).revokeToken(name);
    process.stdout.write(`revoked ${name}\n`);
  });
}
