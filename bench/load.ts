// Load benchmark: 200 lab VMs across 4 lab hosts, all protected (a Temporal Schedule each) and
// backed up at once on this machine, in waves (wave 1 = initial replicas, later waves = express
// fulls after a few guest writes per VM). Every process as in production: a Temporal dev server,
// the protection server (`hvprotect server`) and one `hvprotect agent` per host, each its own
// process; this script is only the client (and the lab's guest).
//
//   npx tsc -p . && node dist/bench/load.js [--vms 200] [--hosts 4] [--disk-mib 4] [--waves 2] [--keep]
//
// Checked from the workflow histories (test/load/history.ts): every backup commits a point; never
// more than 3 transfers at once on a host; no two backups of one VM hold its lease at once (a
// second trigger during a run is skipped by the schedule, a backup by hand is refused by the
// lease). Backups are started directly (known ids; results awaited), not found through
// visibility, which lags by minutes on this machine under this load. Measured: throughput (backups per minute), Temporal overhead per backup (workflow time
// minus time inside the transfer activity; median, p95), peak RSS and CPU time per process.
// Writes bench/load.md. Temp data under /tmp, removed; every process started here is stopped.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, promises as fs, openSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ScheduleOverlapPolicy, type WorkflowHandle } from '@temporalio/client';
import { waitForPollers } from './support';
import { startDevServer, freePort, type DevServer } from '../temporal/dev-server';
import { connectClient, loadTemporalSettings } from '../temporal/connection';
import { serverTaskQueue, hostTaskQueue, hostTransferQueue } from '../temporal/task-queues';

const SERVER_ID = 'load01';
const SERVER_TASK_QUEUE = serverTaskQueue(SERVER_ID);
import { Lab } from '../hypervisor/lab';
import { StorageClient } from '../storage-api/client';
import { backupInput, protectVm, scheduleIdOf } from '../client/protection';
import type { BackupVmInput, BackupVmResult } from '../workflows/backup-vm';
import { jobInterval, maxOverlap, outsideActivitiesMs, overlappingPairs, quantile, readWorkflowRuns, transfersByHost, transferMs, withRetry, type WorkflowRun } from '../test/load/history';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const VMS = Number(opt('vms', '200'));
const HOSTS = Array.from({ length: Number(opt('hosts', '4')) }, (_, i) => `hv${String(i + 1).padStart(2, '0')}`);
const DISK = Number(opt('disk-mib', '4')) * 1024 * 1024;
const WAVES = Number(opt('waves', '2'));
const MAX_TRANSFERS = 3;
const BY_HAND = 8;
const SCHEDULED = 8;
const ROOT = path.resolve(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'client', 'cli.js');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sec = (ms: number) => (ms / 1000).toFixed(2);

// ---- process sampling --------------------------------------------------------------------------

interface Proc {
  name: string;
  pid: number;
  samples: number[]; // RSS MiB, once a second
}

function procStatus(pid: number): { rss: number; hwm: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /VmRSS:\s+(\d+) kB/.exec(s);
    const hwm = /VmHWM:\s+(\d+) kB/.exec(s);
    return { rss: rss ? Number(rss[1]) / 1024 : NaN, hwm: hwm ? Number(hwm[1]) / 1024 : NaN };
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) a process used so far, itself and its waited-for children. */
function cpuSeconds(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    // fields 14..17 (1-based) = utime stime cutime cstime; rest[0] is field 3
    const ticks = [11, 12, 13, 14].reduce((s, i) => s + Number(rest[i]), 0);
    return ticks / 100;
  } catch {
    return NaN;
  }
}

// ---- main --------------------------------------------------------------------------------------

interface WaveReport {
  wave: number;
  kind: string;
  backups: number;
  firstStart: number;
  lastClose: number;
  perMinute: number;
  wallMs: number[];
  overheadMs: number[];
  overheadNoQueueMs: number[];
  transferMs: number[];
  transferQueueMs: number[];
  outsideMs: number[];
  peaks: Record<string, number>;
  transfersPerHost: Record<string, number>;
  skipped: number;
  byHand: { started: number; refused: number; ran: number };
  overlaps: string[];
  failed: string[];
  rssAfter: Record<string, number>;
  /** Per activity type: queue (scheduled → started) and run (started → closed) times of completed backups. */
  steps: Map<string, { queued: number[]; ran: number[] }>;
}

async function main(): Promise<void> {
  const tmp = await fs.mkdtemp(path.join('/tmp', 'hvp-load-'));
  const children: ChildProcess[] = [];
  let dev: DevServer | undefined;
  let sampler: NodeJS.Timeout | undefined;
  const cleanup = async () => {
    if (sampler) clearInterval(sampler);
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    await Promise.race([Promise.all(children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once('exit', r)) : undefined))), sleep(25_000)]);
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await dev?.stop().catch(() => undefined);
    if (!args.includes('--keep')) await fs.rm(tmp, { recursive: true, force: true });
  };
  const onSignal = () => void cleanup().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const loadAtStart = os.loadavg();
  const t0 = Date.now();
  try {
    console.log(`temp ${tmp}`);
    dev = await startDevServer({ dbFile: path.join(tmp, 'temporal', 'db.sqlite'), port: await freePort(), headless: true, readyTimeoutMs: 120_000 });
    const temporal = loadTemporalSettings({ TEMPORAL_ADDRESS: dev.address, TEMPORAL_NAMESPACE: 'default' });
    const env = { ...process.env, TEMPORAL_ADDRESS: temporal.address, TEMPORAL_NAMESPACE: temporal.namespace, HVPROTECT_LOG_FORMAT: 'json', HVPROTECT_LOG_LEVEL: 'warn' };
    const log = (name: string) => openSync(path.join(tmp, `${name}.log`), 'a');

    // The protection server, its own process.
    const stateDir = path.join(tmp, 'server');
    const metricsPort = await freePort();
    const server = spawn(process.execPath, [CLI, 'server', '--id', SERVER_ID, '--state-dir', stateDir, '--api-port', '0', '--metrics-port', String(metricsPort)], {
      env,
      stdio: ['ignore', log('server'), log('server')],
    });
    children.push(server);
    const urlFile = path.join(stateDir, 'storage-api.url');
    for (let i = 0; !existsSync(urlFile); i++) {
      if (i > 600 || server.exitCode !== null) throw new Error(`the protection server did not start: see ${tmp}/server.log`);
      await sleep(100);
    }
    const storageUrl = (await fs.readFile(urlFile, 'utf8')).trim();
    const admin = new StorageClient(storageUrl, (await fs.readFile(path.join(stateDir, 'admin.token'), 'utf8')).trim());

    // The lab: hosts and VMs with small disks.
    const lab = await Lab.open(path.join(tmp, 'lab'));
    for (const h of HOSTS) await lab.createHost(h);
    const vms: Array<{ vmId: string; name: string; host: string; diskId: string; ds: string }> = [];
    let t = Date.now();
    for (let i = 0; i < VMS; i++) {
      const host = HOSTS[i % HOSTS.length];
      const name = `load-${String(i).padStart(3, '0')}`;
      const f = await lab.createVm({ name, host, disks: [{ sizeBytes: DISK, content: { kind: 'random', seed: 5000 + i, fill: 0.75 } }] });
      vms.push({ vmId: f.vmId, name, host, diskId: f.disks[0].diskId, ds: name });
    }
    const createMs = Date.now() - t;
    console.log(`${VMS} VMs created in ${sec(createMs)} s`);

    // One agent process per host.
    const agents = new Map<string, ChildProcess>();
    for (const h of HOSTS) {
      const tokenFile = path.join(tmp, `${h}.token`);
      await fs.writeFile(tokenFile, await admin.issueToken(h, 'agent'), { mode: 0o600 });
      const a = spawn(process.execPath, [CLI, 'agent', '--host', h, '--lab-root', lab.root, '--server', `${SERVER_ID}=${tokenFile}`], {
        env,
        stdio: ['ignore', log(`agent-${h}`), log(`agent-${h}`)],
      });
      children.push(a);
      agents.set(h, a);
    }
    const client = await connectClient(temporal);
    await waitForPollers(client, temporal.namespace, [{ name: SERVER_TASK_QUEUE, kind: 'workflow' as const }, ...HOSTS.flatMap((h) => [hostTaskQueue(h), hostTransferQueue(h)]).map((name) => ({ name, kind: 'activity' as const }))], 120_000);

    // RSS of every process, once a second.
    const procs: Proc[] = [
      { name: 'Temporal dev server', pid: dev.process.pid!, samples: [] },
      { name: 'protection server', pid: server.pid!, samples: [] },
      ...HOSTS.map((h) => ({ name: `agent ${h}`, pid: agents.get(h)!.pid!, samples: [] })),
      { name: 'benchmark client + lab guest', pid: process.pid, samples: [] },
    ];
    const cpuAtStart = new Map(procs.map((p) => [p.name, cpuSeconds(p.pid)]));
    const sample = () => {
      for (const p of procs) {
        const s = procStatus(p.pid);
        if (s) p.samples.push(s.rss);
      }
    };
    sample();
    const rssBefore = Object.fromEntries(procs.map((p) => [p.name, p.samples[p.samples.length - 1]]));
    sampler = setInterval(sample, 1000);

    t = Date.now();
    for (const v of vms) await protectVm(client, { vm: { vmId: v.vmId, name: v.name, host: v.host, state: 'running' }, dataSource: v.ds, schedule: { everyHours: 24 } });
    console.log(`${VMS} protections created in ${sec(Date.now() - t)} s`);

    const waves: WaveReport[] = [];
    const seenIds = new Set<string>();
    const describe = (ds: string) => withRetry('describe schedule', () => client.schedule.getHandle(scheduleIdOf(ds)).describe());
    // SCHEDULED VMs are started by their schedule (trigger, overlap SKIP) and triggered again while
    // that run goes; BY_HAND VMs get a second backup by hand while their first holds the lease; the
    // rest (and BY_HAND) are started as `hvprotect backup` does, with the schedule's own input.
    const schedGroup = vms.slice(0, SCHEDULED);
    const direct = vms.slice(SCHEDULED);
    const handGroup = direct.slice(-BY_HAND);
    for (let wave = 1; wave <= WAVES; wave++) {
      if (wave > 1) {
        // A guest write on every VM so that the express fulls have something to send.
        const buf = Buffer.alloc(64 * 1024);
        for (const v of vms) {
          randomFillSync(buf);
          await lab.writeDisk(v.vmId, v.diskId, ((wave * 7 + v.name.length) % (DISK / buf.length)) * buf.length, buf);
        }
      }
      const waveStart = Date.now();
      console.log(`wave ${wave}: starting ${VMS} backups`);
      // trigger() in the TypeScript SDK overrides the schedule's overlap policy with ALLOW_ALL
      // unless told otherwise: pass SKIP, the policy protectVm gives every schedule (a timed run's).
      const trigger = (ds: string) => withRetry('trigger', () => client.schedule.getHandle(scheduleIdOf(ds)).trigger(ScheduleOverlapPolicy.SKIP));
      await Promise.all(schedGroup.map((v) => trigger(v.ds)));
      const handles = new Map<string, WorkflowHandle>();
      let next = 0;
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (next < direct.length) {
            const v = direct[next++];
            const workflowId = `backup/${v.ds}/wave-${wave}`;
            const args = [backupInput(v.ds, { vmId: v.vmId, name: v.name, host: v.host, state: 'running' }, {})];
            await withRetry('start', () => client.workflow.start('backupVm', { taskQueue: SERVER_TASK_QUEUE, workflowId, args })).catch((err) => {
              if ((err as Error).name !== 'WorkflowExecutionAlreadyStartedError') throw err;
            });
            handles.set(v.ds, client.workflow.getHandle(workflowId));
          }
        }),
      );
      console.log(`  all started in ${sec(Date.now() - waveStart)} s`);

      // The scheduled ones: once a run goes, trigger again (skipped while it runs).
      await Promise.all(
        schedGroup.map(async (v) => {
          for (let k = 0; k < 600; k++) {
            const d = await describe(v.ds);
            if (d.info.runningActions.length > 0) return trigger(v.ds);
            if (d.info.recentActions.some((a) => !seenIds.has(a.action.workflow.workflowId))) return; // finished already
            await sleep(200);
          }
        }),
      );
      // By hand, while the first backup of the VM holds its lease: refused.
      const manual: WorkflowHandle[] = [];
      await Promise.all(
        handGroup.map(async (v) => {
          for (let k = 0; k < 1200; k++) {
            const [run] = await readWorkflowRuns(client, [{ workflowId: handles.get(v.ds)!.workflowId }]);
            if (run.outcome !== 'open') return;
            if (run.activities.some((a) => a.activityType === 'acquireBackupLease' && a.outcome === 'completed')) {
              const input: BackupVmInput = { dataSource: v.ds, vm: v.vmId };
              manual.push(await client.workflow.start('backupVm', { taskQueue: SERVER_TASK_QUEUE, workflowId: `backup/${v.ds}/by-hand-${wave}`, args: [input] }));
              return;
            }
            await sleep(250);
          }
        }),
      );

      // Until everything started has closed (results, not visibility: it lags minutes under this load).
      let closed = 0;
      const progress = setInterval(() => process.stdout.write(`\r  wave ${wave}: ${closed}/${handles.size} direct backups closed, ${sec(Date.now() - waveStart)} s   `), 2000);
      await Promise.allSettled([...handles.values(), ...manual].map((h) => h.result().finally(() => closed++)));
      const schedIds: string[] = [];
      let skipped = 0;
      for (const v of schedGroup) {
        for (;;) {
          const d = await describe(v.ds);
          if (d.info.runningActions.length === 0) {
            for (const a of d.info.recentActions) if (!seenIds.has(a.action.workflow.workflowId)) schedIds.push(a.action.workflow.workflowId);
            skipped += d.info.numActionsSkippedOverlap;
            break;
          }
          await sleep(500);
        }
      }
      await Promise.allSettled(schedIds.map((id) => client.workflow.getHandle(id).result()));
      clearInterval(progress);
      process.stdout.write('\n');
      skipped -= waves.reduce((s, w) => s + w.skipped, 0);

      // Anything else that committed a point of our VMs in this wave (there should be nothing).
      const ids = [...schedIds, ...[...handles.values()].map((h) => h.workflowId)];
      const known = new Set([...ids, ...manual.map((m) => m.workflowId), ...seenIds]);
      const pointsByDs = new Map<string, Awaited<ReturnType<typeof admin.listPoints>>>();
      for (const v of vms) {
        const points = await admin.listPoints(v.ds);
        pointsByDs.set(v.ds, points);
        for (const p of points) {
          const wf = (p.vm as { workflowId?: string }).workflowId;
          if (wf && !known.has(wf)) {
            ids.push(wf);
            known.add(wf);
          }
        }
      }
      const runs: WorkflowRun[] = await readWorkflowRuns(client, [...ids, ...manual.map((m) => m.workflowId)].map((workflowId) => ({ workflowId })));
      for (const r of runs) seenIds.add(r.workflowId);
      const failed = runs
        .filter((r) => r.outcome !== 'completed' && !(r.workflowId.includes('/by-hand-') && /already running/.test(JSON.stringify(r.activities.map((a) => a.failure)))))
        .map((r) => `${r.workflowId}: ${r.outcome} ${r.failure ?? ''}`);
      const scheduled = runs.filter((r) => !r.workflowId.includes('/by-hand-'));
      const handRuns = runs.filter((r) => r.workflowId.includes('/by-hand-'));
      const done = scheduled.filter((r) => r.outcome === 'completed');

      // Every VM got its point in this wave (the repository agrees with the histories).
      const committedByDs = new Map<string, number>();
      for (const r of runs) if (r.outcome === 'completed') committedByDs.set((r.result as BackupVmResult).dataSource, (committedByDs.get((r.result as BackupVmResult).dataSource) ?? 0) + 1);
      for (const v of vms) {
        const points = pointsByDs.get(v.ds)!;
        const expected = waves.reduce((s, w) => s + ((w as WaveReport & { committed?: Map<string, number> }).committed?.get(v.ds) ?? 0), 0) + (committedByDs.get(v.ds) ?? 0);
        if (points.length !== expected) failed.push(`${v.ds}: ${points.length} points in the repository, ${expected} committed backups in the histories`);
        if (!committedByDs.get(v.ds)) failed.push(`${v.ds}: no committed backup in wave ${wave}`);
      }

      const byHost = transfersByHost(runs);
      const peaks = Object.fromEntries([...byHost].map(([h, iv]) => [h, maxOverlap(iv).max]));
      const transfersPerHost = Object.fromEntries([...byHost].map(([h, iv]) => [h, iv.length]));
      const byDs = new Map<string, NonNullable<ReturnType<typeof jobInterval>>[]>();
      for (const r of runs) {
        const iv = jobInterval(r);
        if (iv) byDs.set((r.input as BackupVmInput).dataSource, [...(byDs.get((r.input as BackupVmInput).dataSource) ?? []), iv]);
      }
      const overlaps = [...byDs.values()].flatMap((ivs) => overlappingPairs(ivs)).map(([a, b]) => `${a.label} / ${b.label}`);
      const transferQueue = (r: WorkflowRun) => r.activities.filter((a) => a.activityType === 'transferDisk' && a.startedAt !== undefined).reduce((s, a) => s + (a.startedAt! - a.scheduledAt), 0);
      const firstStart = Math.min(...done.map((r) => r.startedAt));
      const lastClose = Math.max(...done.map((r) => r.closedAt!));
      const rssAfter = Object.fromEntries(procs.map((p) => [p.name, procStatus(p.pid)?.rss ?? NaN]));
      const steps = new Map<string, { queued: number[]; ran: number[] }>();
      for (const r of done) {
        for (const a of r.activities) {
          if (a.startedAt === undefined || a.closedAt === undefined) continue;
          const st = steps.get(a.activityType) ?? { queued: [], ran: [] };
          st.queued.push(a.startedAt - a.scheduledAt);
          st.ran.push(a.closedAt - a.startedAt);
          steps.set(a.activityType, st);
        }
      }
      const report: WaveReport & { committed: Map<string, number> } = {
        steps,
        wave,
        kind: [...new Set(done.map((r) => (r.result as BackupVmResult).kind))].join(', '),
        backups: done.length,
        firstStart,
        lastClose,
        perMinute: done.length / ((lastClose - firstStart) / 60_000),
        wallMs: done.map((r) => r.closedAt! - r.startedAt),
        overheadMs: done.map((r) => r.closedAt! - r.startedAt - transferMs(r)),
        overheadNoQueueMs: done.map((r) => r.closedAt! - r.startedAt - transferMs(r) - transferQueue(r)),
        transferMs: done.map((r) => transferMs(r)),
        transferQueueMs: done.map((r) => transferQueue(r)),
        outsideMs: done.map((r) => outsideActivitiesMs(r)),
        peaks,
        transfersPerHost,
        skipped,
        byHand: { started: manual.length, refused: handRuns.filter((r) => r.outcome === 'failed').length, ran: handRuns.filter((r) => r.outcome === 'completed').length },
        overlaps,
        failed,
        rssAfter,
        committed: committedByDs,
      };
      waves.push(report);
      console.log(
        `wave ${wave}: ${report.backups} backups (${report.kind}) in ${sec(lastClose - firstStart)} s = ${report.perMinute.toFixed(1)}/min; ` +
          `overhead median ${sec(quantile(report.overheadMs, 0.5))} s p95 ${sec(quantile(report.overheadMs, 0.95))} s; peaks ${JSON.stringify(peaks)}; ` +
          `skipped ${skipped}; by hand ${JSON.stringify(report.byHand)}; overlaps ${overlaps.length}; failed ${failed.length}`,
      );
      for (const f of failed.slice(0, 20)) console.log(`  ${f}`);
    }
    if (sampler) clearInterval(sampler);
    sample();
    const cpuUsed = Object.fromEntries(procs.map((p) => [p.name, cpuSeconds(p.pid) - (cpuAtStart.get(p.name) ?? 0)]));
    const peakRss = Object.fromEntries(procs.map((p) => [p.name, procStatus(p.pid)?.hwm ?? Math.max(...p.samples)]));
    const rssEnd = Object.fromEntries(procs.map((p) => [p.name, p.samples[p.samples.length - 1]]));

    // ---- the report --------------------------------------------------------------------------------
    const cpu = os.cpus()[0]?.model ?? 'unknown';
    const totalBackups = waves.reduce((s, w) => s + w.backups, 0);
    const cpuAll = Object.values(cpuUsed).reduce((a, b) => a + b, 0);
    const load = (l: number[]) => l.map((x) => x.toFixed(2)).join(' ');
    const q = (xs: number[], p: number) => sec(quantile(xs, p));
    const allOk = waves.every((w) => w.failed.length === 0 && w.overlaps.length === 0 && Object.values(w.peaks).every((p) => p <= MAX_TRANSFERS));
    const lines = [
      '# Load benchmark',
      '',
      `Run ${new Date().toISOString()} by \`node dist/bench/load.js\`: ${VMS} lab VMs across ${HOSTS.length} lab hosts (${VMS / HOSTS.length} each), one ${DISK / 1024 / 1024} MiB ` +
        `dynamic VHDX per VM (75% of its 1 MiB regions random data), each protected by a Temporal Schedule (overlap SKIP, as \`protect add\` makes it). Per wave all ${VMS} ` +
        `backups start at once: ${SCHEDULED} by their schedule (trigger with the schedule's SKIP policy, then triggered again while that run goes: must be skipped), the other ` +
        `${VMS - SCHEDULED} as \`hvprotect backup\` starts them (\`backupVm\` with the schedule's own input, 16 start calls in flight); on ${BY_HAND} of those a second backup is started ` +
        `by hand while the first holds the lease (must be refused). Wave 1 = initial replicas; later waves = express fulls after one 64 KiB guest write per VM. `+
        `Agents run transfers on \`hvprotect-transfer-<host>\` with the default limit of ${MAX_TRANSFERS}.`,
      '',
      `**Result: ${allOk ? 'all checks passed' : 'CHECKS FAILED (see below)'}.**`,
      '',
      '## Throughput and Temporal overhead',
      '',
      'Throughput = committed backups / (last backup closed − first backup started). Per backup, from its history: wall = WorkflowExecutionStarted → Completed; ' +
        'transfer = transferDisk started → closed; **overhead = wall − transfer** (everything Temporal and the other steps add: workflow tasks, lease, locate, ' +
        'inspect, plan, checkpoint, commit, release, retention, and the wait for a transfer slot); overhead without the slot wait = overhead − (transfer scheduled → started).',
      '',
      '| wave | kind | backups | span (s) | **backups / min** | wall median / p95 (s) | transfer median / p95 (s) | wait for a transfer slot median / p95 (s) | **overhead median / p95 (s)** | overhead without slot wait median / p95 (s) | no activity scheduled or running (workflow tasks) median / p95 (s) |',
      '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      ...waves.map(
        (w) =>
          `| ${w.wave} | ${w.kind} | ${w.backups} | ${sec(w.lastClose - w.firstStart)} | **${w.perMinute.toFixed(1)}** | ${q(w.wallMs, 0.5)} / ${q(w.wallMs, 0.95)} | ` +
          `${q(w.transferMs, 0.5)} / ${q(w.transferMs, 0.95)} | ${q(w.transferQueueMs, 0.5)} / ${q(w.transferQueueMs, 0.95)} | **${q(w.overheadMs, 0.5)} / ${q(w.overheadMs, 0.95)}** | ` +
          `${q(w.overheadNoQueueMs, 0.5)} / ${q(w.overheadNoQueueMs, 0.95)} | ${q(w.outsideMs, 0.5)} / ${q(w.outsideMs, 0.95)} |`,
      ),
      '',
      '## Where a backup\'s time goes under this load (median / p95 per activity, ms)',
      '',
      'queued = scheduled → started (waiting for a worker slot or a poller), ran = started → closed. locateVm runs once per host per backup (all hosts are asked).',
      '',
      `| activity | ${waves.map((w) => `wave ${w.wave} queued | wave ${w.wave} ran`).join(' | ')} |`,
      `| --- | ${waves.map(() => '---: | ---:').join(' | ')} |`,
      ...[...new Set(waves.flatMap((w) => [...w.steps.keys()]))].map(
        (name) =>
          `| ${name} | ${waves
            .map((w) => {
              const st = w.steps.get(name);
              if (!st) return ' | ';
              const f = (xs: number[]) => `${quantile(xs, 0.5).toFixed(0)} / ${quantile(xs, 0.95).toFixed(0)}`;
              return `${f(st.queued)} | ${f(st.ran)}`;
            })
            .join(' | ')} |`,
      ),
      '',
      `CPU per backup, all processes together: ${((1000 * cpuAll) / totalBackups).toFixed(0)} ms (of which the Temporal dev server ${((1000 * cpuUsed['Temporal dev server']) / totalBackups).toFixed(0)} ms and the protection server ${((1000 * cpuUsed['protection server']) / totalBackups).toFixed(0)} ms). ` +
        `With every backup started at once the machine is saturated and each backup waits its turn at every step, so per-backup wall time and overhead measure queueing; ` +
        `the CPU cost per backup and the throughput are the figures that carry over.`,
      '',
      '## Checks (from the workflow histories and the repository)',
      '',
      '| wave | points committed / VMs | failed | peak transfers at once per host (limit 3) | transfers per host | second triggers skipped (overlap) | by hand: started / refused by the lease / ran after | VM backups overlapping |',
      '| --- | ---: | ---: | --- | --- | ---: | --- | ---: |',
      ...waves.map(
        (w) =>
          `| ${w.wave} | ${w.backups} / ${VMS} | ${w.failed.length} | ${Object.entries(w.peaks).sort().map(([h, p]) => `${h} ${p}`).join(', ')} | ` +
          `${Object.entries(w.transfersPerHost).sort().map(([h, n]) => `${h} ${n}`).join(', ')} | ${w.skipped} | ${w.byHand.started} / ${w.byHand.refused} / ${w.byHand.ran} | ${w.overlaps.length} |`,
      ),
      ...(allOk ? [] : ['', 'Failures:', '', ...waves.flatMap((w) => [...w.failed, ...w.overlaps.map((o) => `overlap: ${o}`)].map((f) => `- wave ${w.wave}: ${f}`))]),
      '',
      '## Memory and CPU per process',
      '',
      `RSS sampled once a second (${procs[0].samples.length} samples); peak = the kernel's high-water mark (VmHWM) at the end. CPU = user + system seconds during the waves.`,
      '',
      `| process | RSS before (MiB) | ${waves.map((w) => `RSS after wave ${w.wave} (MiB)`).join(' | ')} | **peak RSS (MiB)** | CPU (s) | CPU per backup (ms) |`,
      `| --- | ---: | ${waves.map(() => '---:').join(' | ')} | ---: | ---: | ---: |`,
      ...procs.map(
        (p) =>
          `| ${p.name} | ${rssBefore[p.name]?.toFixed(0)} | ${waves.map((w) => w.rssAfter[p.name]?.toFixed(0)).join(' | ')} | **${peakRss[p.name]?.toFixed(0)}** | ${cpuUsed[p.name]?.toFixed(1)} | ${((1000 * cpuUsed[p.name]) / totalBackups).toFixed(0)} |`,
      ),
      '',
      'Notes:',
      `- Machine: ${os.cpus().length} cores (${cpu}), ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, Node ${process.version}; **shared with other engineers working at the same time** ` +
        `(load average ${load(loadAtStart)} at the start, ${load(os.loadavg())} at the end), so times are noisy. Whole run ${sec(Date.now() - t0)} s; VMs created in ${sec(createMs)} s.`,
      '- Processes: Temporal dev server (`temporal server start-dev`, SQLite, headless, its own port), `hvprotect server` (workflows, server activities, storage API, ' +
        `repository), ${HOSTS.length} × \`hvprotect agent --host …\` (lab adapter, default limits), and this script (Temporal client, the lab's guest writes). All on the same 2 cores.`,
      `- End RSS: ${procs.map((p) => `${p.name} ${rssEnd[p.name]?.toFixed(0)} MiB`).join(', ')}.`,
      '- Transfer times and overlaps come from the history event times (the Temporal server\'s clock); a history interval lies inside the agent\'s worker slot, so the peak is a sound lower bound of what the agent ran and an exact check of the limit.',
    ];
    await fs.writeFile(path.join(ROOT, 'bench', 'load.md'), lines.join('\n') + '\n');
    console.log(lines.join('\n'));
    await client.connection.close();
  } finally {
    await cleanup();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
