// Load benchmark: 200 lab VMs across 4 lab hosts, all protected (a protection workflow and a
// Temporal Schedule each, as `protect add` makes them) and backed up at once on this machine, in
// waves (wave 1 = initial replicas, later waves = express fulls after a few guest writes per VM).
// Every process as in production: a Temporal dev server, the protection server(s) (`hvprotect
// server --id load01 …`, one task queue each) and one `hvprotect agent` per host serving every
// server (`--server ID=TOKEN_FILE` per server), each its own process; this script is only the
// client (and the lab's guest). With --servers N the VMs are protected round-robin by N servers.
//
//   npx tsc -p . && node dist/bench/load.js [--vms 200] [--hosts 4] [--servers 1] [--disk-mib 4] [--waves 2] [--out bench/load.md] [--keep]
//
// Every backup goes through the VM's protection, as in production: a few are started by their
// schedule (scheduledBackup signals the protection), the rest as `hvprotect backup` starts them
// (the protection's startJob update, client/protection.ts startJob). Checked from the workflow
// histories (test/load/history.ts): every backup commits a point; never more than 3 transfers at
// once on a host; no two backups of one VM run at once (a second trigger during a run is skipped,
// a backup by hand is refused by the protection up front). Backup ids come from the protections'
// answers and state (results awaited), not from visibility, which lags by minutes on this machine
// under this load. Measured: throughput (backups per minute), Temporal overhead per backup (workflow time
// minus time inside the transfer activity; median, p95), peak RSS and CPU time per process.
// Writes bench/load.md (or --out). Temp data under /tmp, removed; every process started here is stopped.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, promises as fs, openSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ScheduleOverlapPolicy, type WorkflowHandle } from '@temporalio/client';
import { cpuSeconds, procStatus, waitForPollers } from './support';
import { startDevServer, freePort, type DevServer } from '../temporal/dev-server';
import { connectClient, loadTemporalSettings } from '../temporal/connection';
import { serverTaskQueue, hostTaskQueue, hostTransferQueue } from '../temporal/task-queues';
import { Lab } from '../hypervisor/lab';
import { StorageClient } from '../storage-api/client';
import { JobRefused, listServers, protectVm, scheduleIdOf, startBackupNow, startJob } from '../client/protection';
import { protectionStateQuery, protectionWorkflowId } from '../workflows/protection';
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
const OUT = path.resolve(opt('out', path.join(__dirname, '..', '..', 'bench', 'load.md')));
const SERVER_IDS = Array.from({ length: Number(opt('servers', '1')) }, (_, i) => `load${String(i + 1).padStart(2, '0')}`);
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
  byHand: { asked: number; refused: number; ran: number };
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

    // The protection servers, each its own process with its own repository and task queue.
    const servers = new Map<string, { proc: ChildProcess; admin: StorageClient }>();
    for (const id of SERVER_IDS) {
      const stateDir = path.join(tmp, `server-${id}`);
      const metricsPort = await freePort();
      const proc = spawn(process.execPath, [CLI, 'server', '--id', id, '--state-dir', stateDir, '--api-port', '0', '--metrics-port', String(metricsPort)], {
        env,
        stdio: ['ignore', log(`server-${id}`), log(`server-${id}`)],
      });
      children.push(proc);
      const urlFile = path.join(stateDir, 'storage-api.url');
      for (let i = 0; !existsSync(urlFile); i++) {
        if (i > 600 || proc.exitCode !== null) throw new Error(`protection server ${id} did not start: see ${tmp}/server-${id}.log`);
        await sleep(100);
      }
      const storageUrl = (await fs.readFile(urlFile, 'utf8')).trim();
      servers.set(id, { proc, admin: new StorageClient(storageUrl, (await fs.readFile(path.join(stateDir, 'admin.token'), 'utf8')).trim()) });
    }

    // The lab: hosts and VMs with small disks.
    const lab = await Lab.open(path.join(tmp, 'lab'));
    for (const h of HOSTS) await lab.createHost(h);
    const vms: Array<{ vmId: string; name: string; host: string; diskId: string; ds: string; server: string }> = [];
    let t = Date.now();
    for (let i = 0; i < VMS; i++) {
      const host = HOSTS[i % HOSTS.length];
      const name = `load-${String(i).padStart(3, '0')}`;
      const f = await lab.createVm({ name, host, disks: [{ sizeBytes: DISK, content: { kind: 'random', seed: 5000 + i, fill: 0.75 } }] });
      vms.push({ vmId: f.vmId, name, host, diskId: f.disks[0].diskId, ds: name, server: SERVER_IDS[i % SERVER_IDS.length] });
    }
    const createMs = Date.now() - t;
    console.log(`${VMS} VMs created in ${sec(createMs)} s`);

    // One agent process per host, serving every server (a token of each).
    const agents = new Map<string, ChildProcess>();
    for (const h of HOSTS) {
      const serverArgs: string[] = [];
      for (const [id, sv] of servers) {
        const tokenFile = path.join(tmp, `${h}-${id}.token`);
        await fs.writeFile(tokenFile, await sv.admin.issueToken(h, 'agent'), { mode: 0o600 });
        serverArgs.push('--server', `${id}=${tokenFile}`);
      }
      const a = spawn(process.execPath, [CLI, 'agent', '--host', h, '--lab-root', lab.root, ...serverArgs], {
        env,
        stdio: ['ignore', log(`agent-${h}`), log(`agent-${h}`)],
      });
      children.push(a);
      agents.set(h, a);
    }
    const client = await connectClient(temporal);
    await waitForPollers(client, temporal.namespace, [...SERVER_IDS.map((id) => ({ name: serverTaskQueue(id), kind: 'workflow' as const })), ...HOSTS.flatMap((h) => [hostTaskQueue(h), hostTransferQueue(h)]).map((name) => ({ name, kind: 'activity' as const }))], 120_000);

    // RSS of every process, once a second.
    const procs: Proc[] = [
      { name: 'Temporal dev server', pid: dev.process.pid!, samples: [] },
      ...SERVER_IDS.map((id) => ({ name: `protection server ${id}`, pid: servers.get(id)!.proc.pid!, samples: [] })),
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

    // protectVm checks the server it is given against the servers' records (visibility): wait for all.
    for (let i = 0; ; i++) {
      const running = new Set((await listServers(client)).filter((sv) => sv.running).map((sv) => sv.id));
      if (SERVER_IDS.every((id) => running.has(id))) break;
      if (i > 240) throw new Error(`protection servers not listed as running: ${[...running].join(', ')}`);
      await sleep(500);
    }
    t = Date.now();
    for (const v of vms) {
      await protectVm(client, { vm: { vmId: v.vmId, name: v.name, host: v.host, state: 'running' }, server: v.server, dataSource: v.ds, schedule: { everyHours: 24 } });
    }
    console.log(`${VMS} protections created in ${sec(Date.now() - t)} s`);

    const waves: WaveReport[] = [];
    const seenIds = new Set<string>();
    // The protection's own state by query (not protectionState(), which falls back to the memo,
    // without running or recent jobs, when the query takes over 5 s: it may under this load).
    const stateOf = (ds: string) => withRetry('protection state', () => client.workflow.getHandle(protectionWorkflowId(ds)).query(protectionStateQuery));
    // SCHEDULED VMs are started by their schedule (trigger, overlap SKIP: scheduledBackup signals the
    // protection) and triggered again while that run goes; for BY_HAND VMs a second backup is asked
    // for by hand while their first runs (the protection refuses it); the rest (and BY_HAND) are
    // started as `hvprotect backup` starts them, through the protection's startJob update.
    const schedGroup = vms.slice(0, SCHEDULED);
    const direct = vms.slice(SCHEDULED);
    const handGroup = direct.slice(-BY_HAND);
    let skippedBefore = 0;
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
            // The request id makes a retried update return the job it started, not a refusal.
            const { handle } = await withRetry('start', () => startJob(client, v.ds, { kind: 'backup', by: 'load benchmark', requestId: `load-wave-${wave}-${v.ds}` }));
            handles.set(v.ds, handle);
          }
        }),
      );
      console.log(`  all started in ${sec(Date.now() - waveStart)} s`);

      // The scheduled ones: once the protection runs the job, trigger again (skipped while it runs).
      await Promise.all(
        schedGroup.map(async (v) => {
          for (let k = 0; k < 600; k++) {
            const st = await stateOf(v.ds);
            if (st.running) return trigger(v.ds);
            if (st.recent.some((r) => r.outcome !== 'skipped' && !seenIds.has(r.workflowId))) return; // finished already
            await sleep(500);
          }
        }),
      );
      // By hand, while the first backup of the VM runs: refused by its protection up front.
      const manual: WorkflowHandle[] = [];
      let refused = 0;
      let asked = 0;
      await Promise.all(
        handGroup.map(async (v) => {
          const st = await stateOf(v.ds);
          if (st.running?.workflowId !== handles.get(v.ds)!.workflowId) return; // over already
          asked++;
          try {
            manual.push(await startBackupNow(client, { dataSource: v.ds }, 'auto', 'load benchmark by hand'));
          } catch (err) {
            if (!(err instanceof JobRefused)) throw err;
            refused++;
          }
        }),
      );

      // Until everything started has closed (results, not visibility: it lags minutes under this load).
      let closed = 0;
      const progress = setInterval(() => process.stdout.write(`\r  wave ${wave}: ${closed}/${handles.size} direct backups closed, ${sec(Date.now() - waveStart)} s   `), 2000);
      await Promise.allSettled([...handles.values(), ...manual].map((h) => h.result().finally(() => closed++)));
      // The scheduled ones, from their protections' state (the job ids the protection ran).
      const schedIds: string[] = [];
      for (const v of schedGroup) {
        for (;;) {
          const st = await stateOf(v.ds);
          if (st.running) {
            await client.workflow.getHandle(st.running.workflowId).result().catch(() => undefined);
            continue;
          }
          for (const r of st.recent) if (r.outcome !== 'skipped' && !seenIds.has(r.workflowId)) schedIds.push(r.workflowId);
          break;
        }
      }
      // Runs skipped because a job was going: by the schedule (overlap) or by the protection.
      let skippedTotal = 0;
      for (const v of schedGroup) {
        skippedTotal += (await stateOf(v.ds)).skippedRuns;
        skippedTotal += (await withRetry('describe schedule', () => client.schedule.getHandle(scheduleIdOf(v.ds)).describe())).info.numActionsSkippedOverlap;
      }
      await Promise.allSettled(schedIds.map((id) => client.workflow.getHandle(id).result()));
      clearInterval(progress);
      process.stdout.write('\n');
      const skipped = skippedTotal - skippedBefore;
      skippedBefore = skippedTotal;

      // Anything else that committed a point of our VMs in this wave (there should be nothing).
      const ids = [...schedIds, ...[...handles.values()].map((h) => h.workflowId)];
      const known = new Set([...ids, ...manual.map((m) => m.workflowId), ...seenIds]);
      const pointsByDs = new Map<string, Awaited<ReturnType<StorageClient['listPoints']>>>();
      for (const v of vms) {
        const points = await servers.get(v.server)!.admin.listPoints(v.ds);
        pointsByDs.set(v.ds, points);
        for (const p of points) {
          const wf = p.backup.workflowId;
          if (wf && !known.has(wf)) {
            ids.push(wf);
            known.add(wf);
          }
        }
      }
      const runs: WorkflowRun[] = await readWorkflowRuns(client, [...ids, ...manual.map((m) => m.workflowId)].map((workflowId) => ({ workflowId })));
      for (const r of runs) seenIds.add(r.workflowId);
      const failed = runs.filter((r) => r.outcome !== 'completed').map((r) => `${r.workflowId}: ${r.outcome} ${r.failure ?? ''}`);
      const manualIds = new Set(manual.map((m) => m.workflowId));
      const scheduled = runs.filter((r) => !manualIds.has(r.workflowId));
      const handRuns = runs.filter((r) => manualIds.has(r.workflowId));
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
        byHand: { asked, refused, ran: handRuns.filter((r) => r.outcome === 'completed').length },
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
      `Run ${new Date().toISOString()} by \`node dist/bench/load.js ${args.filter((a) => a !== '--keep').join(' ')}\`: ${VMS} lab VMs across ${HOSTS.length} lab hosts (${VMS / HOSTS.length} each), ` +
        `protected by ${SERVER_IDS.length} protection server${SERVER_IDS.length > 1 ? 's' : ''} (${SERVER_IDS.join(', ')}, round-robin; each agent serves all), one ${DISK / 1024 / 1024} MiB ` +
        `dynamic VHDX per VM (75% of its 1 MiB regions random data), each protected as \`protect add\` does it (a protection workflow and a Temporal Schedule, overlap SKIP). Every backup goes ` +
        `through the VM's protection. Per wave all ${VMS} backups start at once: ${SCHEDULED} by their schedule (trigger with the schedule's SKIP policy, \`scheduledBackup\` signals the ` +
        `protection; then triggered again while that run goes: must be skipped), the other ${VMS - SCHEDULED} as \`hvprotect backup\` starts them (the protection's \`startJob\` update, ` +
        `16 in flight); for ${BY_HAND} of those a second backup is asked for by hand while the first runs (must be refused by the protection). Wave 1 = initial replicas; later waves = express fulls after one 64 KiB guest write per VM. `+
        `Agents run transfers on \`hvprotect-transfer-<host>\` with the default limit of ${MAX_TRANSFERS}.`,
      '',
      `**Result: ${allOk ? 'all checks passed' : 'CHECKS FAILED (see below)'}.**`,
      '',
      '## Throughput and Temporal overhead',
      '',
      'Throughput = committed backups / (last backup closed − first backup started). Per backup, from its history: wall = WorkflowExecutionStarted → Completed; ' +
        'transfer = transferDisk started → closed; **overhead = wall − transfer** (everything Temporal and the other steps add: workflow tasks, locate, ' +
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
      `CPU per backup, all processes together: ${((1000 * cpuAll) / totalBackups).toFixed(0)} ms (of which the Temporal dev server ${((1000 * cpuUsed['Temporal dev server']) / totalBackups).toFixed(0)} ms and the protection server${SERVER_IDS.length > 1 ? 's' : ''} ${((1000 * SERVER_IDS.reduce((a, id) => a + cpuUsed[`protection server ${id}`], 0)) / totalBackups).toFixed(0)} ms). ` +
        `With every backup started at once the machine is saturated and each backup waits its turn at every step, so per-backup wall time and overhead measure queueing; ` +
        `the CPU cost per backup and the throughput are the figures that carry over.`,
      '',
      '## Checks (from the workflow histories and the repository)',
      '',
      '| wave | points committed / VMs | failed | peak transfers at once per host (limit 3) | transfers per host | second triggers skipped (overlap) | by hand: asked while the first ran / refused by the protection / ran after | VM backups overlapping |',
      '| --- | ---: | ---: | --- | --- | ---: | --- | ---: |',
      ...waves.map(
        (w) =>
          `| ${w.wave} | ${w.backups} / ${VMS} | ${w.failed.length} | ${Object.entries(w.peaks).sort().map(([h, p]) => `${h} ${p}`).join(', ')} | ` +
          `${Object.entries(w.transfersPerHost).sort().map(([h, n]) => `${h} ${n}`).join(', ')} | ${w.skipped} | ${w.byHand.asked} / ${w.byHand.refused} / ${w.byHand.ran} | ${w.overlaps.length} |`,
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
      `- Processes: Temporal dev server (\`temporal server start-dev\`, SQLite, headless, its own port), ${SERVER_IDS.length} × \`hvprotect server --id …\` (workflows, server activities, storage API, ` +
        `repository; one task queue each), ${HOSTS.length} × \`hvprotect agent --host …\` (lab adapter, default limits), and this script (Temporal client, the lab's guest writes). All on the same 2 cores.`,
      `- End RSS: ${procs.map((p) => `${p.name} ${rssEnd[p.name]?.toFixed(0)} MiB`).join(', ')}.`,
      '- Transfer times and overlaps come from the history event times (the Temporal server\'s clock); a history interval lies inside the agent\'s worker slot, so the peak is a sound lower bound of what the agent ran and an exact check of the limit.',
    ];
    await fs.writeFile(OUT, lines.join('\n') + '\n');
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
