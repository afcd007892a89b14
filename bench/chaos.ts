// Chaos run (issue #12): for N minutes protected lab VMs are backed up on a short schedule while
// this script kills -9 at random the host agents, the protection server and the Temporal dev
// server (each its own OS process; Temporal on a SQLite file so it comes back with every workflow),
// live-migrates VMs and cancels running backups. Then injection stops, the schedules are paused, the
// running backups finish, and the invariants are checked for real:
//   - every committed recovery point restores bit for bit: each point's disk is read back through
//     the verified restore reader over the storage API and compared with what the guest disk held
//     at checkpoint time (the lab's write load is a pure function of its seed, the point records
//     the guest's write count: expectedDiskContent); the newest point of each VM also through
//     `hvprotect restore --to … --format raw` (a restore workflow run by an agent);
//   - the repository and the histories agree (every completed backup's point exists, every point's
//     backup completed);
//   - no backup checkpoint is left (lab.json and no AVHDX on disk), no VM is paused or saved;
//   - no backup session is left in the repository (orphans hold back GC);
//   - no two backups of one VM overlapped (from the workflow histories: first step → last step);
//   - `hvprotect verify --read-data` is clean.
// Not part of `npm test`. Writes bench/chaos.md (or --out).
//
//   npm run build && node dist/bench/chaos.js [--minutes 30] [--vms 6] [--seed 1] [--every-s 45] [--gap-s 15] [--disk-mib 16] [--out bench/chaos.md] [--keep]
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs, openSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Client } from '@temporalio/client';
import { prng } from './support';
import { startDevServer, freePort, type DevServer } from '../temporal/dev-server';
import { connectClient, loadTemporalSettings } from '../temporal/connection';
import { Lab, guestWrite, initialDiskContent, type InitialContent, type WriteLoadProcess } from '../hypervisor/lab';
import { StorageClient } from '../storage-api/client';
import { listServers, protectVm, scheduleIdOf } from '../client/protection';
import { protectionStateQuery, protectionWorkflowId, type ProtectionState } from '../workflows/protection';
import type { BackupVmInput, BackupVmResult } from '../workflows/backup-vm';
import { jobInterval, overlappingPairs, readWorkflowRuns, withRetry, type WorkflowRun } from '../test/load/history';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const MINUTES = Number(opt('minutes', '30'));
const VMS = Number(opt('vms', '6'));
const SEED = Number(opt('seed', '1'));
const EVERY_S = Number(opt('every-s', '45'));
const GAP_S = Number(opt('gap-s', '15'));
const DISK = Number(opt('disk-mib', '16')) * 1024 * 1024;
const OUT = path.resolve(opt('out', path.join(__dirname, '..', '..', 'bench', 'chaos.md')));
const KEEP = args.includes('--keep');
const SERVER_ID = 'chaos01';
const CLUSTER = ['hv01', 'hv02', 'hv03'];
const STANDALONE = 'hv04';
const HOSTS = [...CLUSTER, STANDALONE];
const ROOT = path.resolve(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'client', 'cli.js');
/** Injections and their weights. */
const KINDS = { 'kill -9 agent': 30, 'kill -9 protection server': 14, 'kill -9 Temporal': 8, 'live migration': 26, 'cancel backup': 22 } as const;
type Kind = keyof typeof KINDS;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const raw = prng(Math.imul(SEED, 2654435761) ^ 0x5bd1e995);
/** Uniform in [0, 1), reproducible from --seed. */
const rand = () => raw() / 2 ** 32;
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
const between = (lo: number, hi: number) => lo + rand() * (hi - lo);

interface Injection {
  at: number;
  kind: Kind;
  target: string;
  detail: string;
  done: boolean;
}

interface ChaosVm {
  vmId: string;
  name: string;
  diskId: string;
  content: InitialContent;
  seed: number;
  offline?: 'pause' | 'save';
  load?: WriteLoadProcess;
}

/** A process the run keeps alive: restarted after a kill; an exit nobody asked for is counted. */
class Supervised {
  proc?: ChildProcess;
  killedByUs = 0;
  ownExits: string[] = [];
  starts = 0;
  down = false;
  constructor(
    readonly name: string,
    private readonly launch: () => ChildProcess,
    private readonly ready: (p: ChildProcess) => Promise<void>,
    private readonly logFile: string,
  ) {}
  up(): boolean {
    return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null;
  }
  async start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const p = this.launch();
      this.proc = p;
      this.starts++;
      this.down = false;
      p.once('exit', (code, signal) => {
        if (this.proc !== p || this.down) return;
        // Not our kill: note it and bring it back (a server that finds Temporal down may give up).
        this.ownExits.push(`${new Date().toISOString()} exit ${signal ?? code}: ${tail(this.logFile, 2)}`);
        this.down = true;
        setTimeout(() => void this.start().catch((e) => console.error(`${this.name}: ${(e as Error).message}`)), 2000);
      });
      try {
        await this.ready(p);
        return;
      } catch (err) {
        if (attempt >= 20) throw err;
        if (this.up()) {
          this.down = true;
          p.kill('SIGKILL');
        }
        await sleep(2000);
      }
    }
  }
  async kill(): Promise<void> {
    if (!this.proc || !this.up()) return;
    this.down = true;
    this.killedByUs++;
    const p = this.proc;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
  }
  async stop(): Promise<void> {
    if (!this.proc || !this.up()) return;
    this.down = true;
    const p = this.proc;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await Promise.race([gone, sleep(20_000)]);
    if (this.up()) p.kill('SIGKILL');
  }
}

function tail(file: string, lines: number): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join(' | ').slice(-600);
  } catch {
    return '';
  }
}

async function main(): Promise<void> {
  const tmp = await fs.mkdtemp(path.join('/tmp', 'hvp-chaos-'));
  const t0 = Date.now();
  const loadAtStart = os.loadavg();
  const loadSamples: number[] = [];
  const loadTimer = setInterval(() => loadSamples.push(os.loadavg()[0]), 30_000);
  const log = (name: string) => openSync(path.join(tmp, `${name}.log`), 'a');
  const logPath = (name: string) => path.join(tmp, `${name}.log`);
  const stamp = (t = Date.now()) => {
    const s = Math.round((t - t0) / 1000);
    return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
  };
  const say = (msg: string) => console.log(`[${stamp()}] ${msg}`);
  let dev: DevServer | undefined;
  const vms: ChaosVm[] = [];
  const supervised: Supervised[] = [];
  const cleanup = async () => {
    clearInterval(loadTimer);
    for (const v of vms) await v.load?.stop().catch(() => undefined);
    for (const s of supervised) await s.stop().catch(() => undefined);
    await dev?.stop().catch(() => undefined);
    // A run that found something keeps its state (logs, repository, Temporal's database) to look into.
    if (!KEEP && process.exitCode === 0) await fs.rm(tmp, { recursive: true, force: true });
    else console.log(`state kept in ${tmp}`);
  };
  const onSignal = () => void cleanup().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    say(`temp ${tmp}; ${MINUTES} min, ${VMS} VMs, seed ${SEED}, schedule every ${EVERY_S} s, an injection every ~${GAP_S} s`);
    // ---- the stack ------------------------------------------------------------------------------
    const temporalPort = await freePort();
    const dbFile = path.join(tmp, 'temporal', 'db.sqlite');
    const startTemporal = async () => {
      dev = await startDevServer({ dbFile, port: temporalPort, headless: true, readyTimeoutMs: 180_000, logFile: logPath('temporal') });
    };
    await startTemporal();
    const temporal = loadTemporalSettings({ TEMPORAL_ADDRESS: dev!.address, TEMPORAL_NAMESPACE: 'default' });
    const env = { ...process.env, TEMPORAL_ADDRESS: temporal.address, TEMPORAL_NAMESPACE: temporal.namespace, TEMPORAL_CONFIG_FILE: '/nonexistent', HVPROTECT_LOG_FORMAT: 'json', HVPROTECT_LOG_LEVEL: 'info' };

    const stateDir = path.join(tmp, 'server');
    const apiPort = await freePort();
    let metricsPort = await freePort();
    while (metricsPort + 1 === apiPort || metricsPort === temporalPort + 1) metricsPort = await freePort();
    const storageUrl = `http://127.0.0.1:${apiPort}`;
    const server = new Supervised(
      'protection server',
      () =>
        spawn(process.execPath, [CLI, 'server', '--id', SERVER_ID, '--state-dir', stateDir, '--api-port', String(apiPort), '--metrics-port', String(metricsPort), '--max-points-per-hour', '1000'], {
          env,
          stdio: ['ignore', log('server'), log('server')],
        }),
      async (p) => {
        for (const deadline = Date.now() + 120_000; ; ) {
          if (p.exitCode !== null || p.signalCode !== null) throw new Error(`protection server exited: ${tail(logPath('server'), 3)}`);
          const ok = await fetch(`${storageUrl}/v1/chunks/missing`, { method: 'POST' }).then((r) => r.status === 401, () => false);
          if (ok) return;
          if (Date.now() > deadline) throw new Error('protection server did not come up');
          await sleep(250);
        }
      },
      logPath('server'),
    );
    supervised.push(server);
    await server.start();
    const admin = new StorageClient(storageUrl, (await fs.readFile(path.join(stateDir, 'admin.token'), 'utf8')).trim());

    const lab = await Lab.open(path.join(tmp, 'lab'));
    await lab.createCluster('clu1', CLUSTER);
    await lab.createHost(STANDALONE);
    for (let i = 0; i < VMS; i++) {
      const name = `chaos-${String(i).padStart(2, '0')}`;
      const content: InitialContent = { kind: 'random', seed: 9000 + SEED * 100 + i, fill: 0.6 };
      // A quarter are Linux guests paused for their checkpoint, a quarter saved: offline backups.
      const offline = i % 4 === 2 ? 'pause' : i % 4 === 3 ? 'save' : undefined;
      const f = await lab.createVm({
        name,
        host: CLUSTER[i % CLUSTER.length],
        storage: 'csv',
        disks: [{ sizeBytes: DISK, content }],
        ...(offline ? { guestOs: 'Debian 12', guestOsFamily: 'linux' as const } : {}),
      });
      vms.push({ vmId: f.vmId, name, diskId: f.disks[0].diskId, content, seed: 700 + SEED * 100 + i, offline });
    }

    const agents = new Map<string, Supervised>();
    for (const h of HOSTS) {
      const tokenFile = path.join(tmp, `${h}.token`);
      await fs.writeFile(tokenFile, await admin.issueToken(h, 'agent'), { mode: 0o600 });
      const a = new Supervised(
        `agent ${h}`,
        () => spawn(process.execPath, [CLI, 'agent', '--host', h, '--lab-root', lab.root, '--server', `${SERVER_ID}=${tokenFile}`], { env, stdio: ['ignore', log(`agent-${h}`), log(`agent-${h}`)] }),
        async (p) => {
          await sleep(500);
          if (p.exitCode !== null || p.signalCode !== null) throw new Error(`agent ${h} exited: ${tail(logPath(`agent-${h}`), 3)}`);
        },
        logPath(`agent-${h}`),
      );
      agents.set(h, a);
      supervised.push(a);
      await a.start();
    }

    const client: Client = await connectClient(temporal);
    for (let i = 0; ; i++) {
      if ((await listServers(client)).some((sv) => sv.id === SERVER_ID && sv.running)) break;
      if (i > 240) throw new Error(`protection server ${SERVER_ID} not listed as running`);
      await sleep(500);
    }
    // The guests write all the time (a write every ~0.4 s each), deterministically from their seeds.
    for (const v of vms) v.load = await lab.startWriteLoad({ vm: v.vmId, seed: v.seed, intervalMs: 400, batch: 1 });
    // Protected as `protect add` does it, then the schedule shortened to every EVERY_S seconds.
    for (const v of vms) {
      await protectVm(client, { vm: { vmId: v.vmId, name: v.name, host: (await lab.locateVm(v.vmId)).host, state: 'running' }, server: SERVER_ID, dataSource: v.name, schedule: { everyHours: 24 }, offlineMethod: v.offline });
      await withRetry('schedule update', () =>
        client.schedule.getHandle(scheduleIdOf(v.name)).update((prev) => ({ ...prev, spec: { intervals: [{ every: `${EVERY_S} seconds`, offset: `${Math.floor(rand() * EVERY_S)} seconds` }] } })),
      );
    }
    say(`stack up: Temporal ${temporal.address} (pid ${dev!.process.pid}), server pid ${server.proc!.pid}, agents ${[...agents.values()].map((a) => a.proc!.pid).join(', ')}; ${VMS} VMs protected`);

    // ---- chaos ----------------------------------------------------------------------------------
    const injections: Injection[] = [];
    const restarts: Promise<unknown>[] = [];
    let temporalDown = false;
    const chaosStart = Date.now();
    const chaosEnd = chaosStart + MINUTES * 60_000;
    const stateOf = async (ds: string): Promise<ProtectionState> => client.workflow.getHandle(protectionWorkflowId(ds)).query(protectionStateQuery);
    // What the backups were doing when a process was killed (asked before the kill, 5 s at most).
    const runningSteps = async (): Promise<string> => {
      if (temporalDown) return '';
      const out: string[] = [];
      const ask = (async () => {
        for (const v of vms) {
          const st = await stateOf(v.name);
          if (!st.running) continue;
          const d = await client.workflow.getHandle(st.running.workflowId).describe();
          const steps = (d.raw.pendingActivities ?? []).map((a) => a.activityType?.name).filter(Boolean);
          out.push(`${v.name} in ${steps.join('+') || 'a workflow task'}`);
        }
      })().catch(() => undefined);
      await Promise.race([ask, sleep(5000)]);
      return out.length ? `; backups then: ${out.join(', ')}` : '';
    };
    const weighted = Object.entries(KINDS) as Array<[Kind, number]>;
    const total = weighted.reduce((s, [, w]) => s + w, 0);
    while (Date.now() < chaosEnd) {
      await sleep(Math.min(-Math.log(1 - rand()) * GAP_S * 1000, 4 * GAP_S * 1000));
      if (Date.now() >= chaosEnd) break;
      let r = rand() * total;
      const kind = weighted.find(([, w]) => (r -= w) < 0)![0];
      const inj: Injection = { at: Date.now(), kind, target: '', detail: '', done: false };
      injections.push(inj);
      try {
        if (kind === 'kill -9 agent') {
          const live = [...agents.values()].filter((a) => a.up());
          if (!live.length) throw new Error('no agent up');
          const a = pick(live);
          const down = Math.round(between(1, 15));
          inj.target = a.name;
          const then = await runningSteps();
          await a.kill();
          inj.detail = `pid ${a.proc!.pid}; restarted after ${down} s${then}`;
          restarts.push(sleep(down * 1000).then(() => a.start()));
        } else if (kind === 'kill -9 protection server') {
          if (!server.up()) throw new Error('server down already');
          const down = Math.round(between(1, 15));
          inj.target = 'protection server';
          const then = await runningSteps();
          await server.kill();
          inj.detail = `pid ${server.proc!.pid}; restarted after ${down} s${then}`;
          restarts.push(sleep(down * 1000).then(() => server.start()));
        } else if (kind === 'kill -9 Temporal') {
          if (temporalDown) throw new Error('Temporal down already');
          const down = Math.round(between(1, 10));
          inj.target = 'Temporal dev server';
          const then = await runningSteps();
          temporalDown = true;
          const pid = dev!.process.pid;
          await dev!.kill();
          inj.detail = `pid ${pid}; restarted after ${down} s${then}`;
          restarts.push(
            sleep(down * 1000)
              .then(startTemporal)
              .then(() => {
                temporalDown = false;
              }),
          );
        } else if (kind === 'live migration') {
          const v = pick(vms);
          const from = (await lab.locateVm(v.vmId)).host;
          // Mostly within the cluster (change tracking survives); one in five to or from the standalone host.
          const to = rand() < 0.2 ? (from === STANDALONE ? pick(CLUSTER) : STANDALONE) : pick(CLUSTER.filter((h) => h !== from));
          inj.target = v.name;
          const m = await lab.migrateVm(v.vmId, to);
          inj.detail = `${m.from} → ${m.to}${m.withinCluster ? ' (within the cluster)' : ' (outside the cluster: change tracking lost)'}`;
        } else {
          if (temporalDown) throw new Error('Temporal is down');
          const order = [...vms].sort(() => rand() - 0.5);
          for (const v of order) {
            const st = await stateOf(v.name);
            if (!st.running || st.running.kind !== 'backup') continue;
            const h = client.workflow.getHandle(st.running.workflowId);
            const d = await h.describe();
            const steps = (d.raw.pendingActivities ?? []).map((a) => a.activityType?.name).filter(Boolean);
            inj.target = st.running.workflowId;
            await h.cancel();
            inj.detail = `during ${steps.join(', ') || 'a workflow task'}`;
            break;
          }
          if (!inj.target) throw new Error('no backup running');
        }
        inj.done = true;
      } catch (err) {
        inj.detail = `not injected: ${(err as Error).message.split('\n')[0].slice(0, 160)}`;
      }
      say(`${inj.kind}: ${inj.target} ${inj.detail}`);
    }
    const chaosMs = Date.now() - chaosStart;

    // ---- quiesce ---------------------------------------------------------------------------------
    say('injection over: waiting for restarts, pausing the schedules, letting running backups finish');
    await Promise.allSettled(restarts);
    for (const s of supervised) if (!s.up()) await s.start();
    if (!dev || dev.process.exitCode !== null) await startTemporal();
    for (const v of vms) await withRetry('pause schedule', () => client.schedule.getHandle(scheduleIdOf(v.name)).pause('chaos run over'), 20);
    const quiesceStart = Date.now();
    const unanswered = new Map<string, string>();
    for (;;) {
      const running: string[] = [];
      for (const v of vms) {
        // A protection whose workflow task fails cannot answer: note it (an invariant broken), go on.
        const st = await withRetry('state', () => stateOf(v.name), 20).catch((err: Error) => {
          unanswered.set(v.name, `${err.message} ${String((err as { cause?: Error }).cause?.message ?? '')}`.slice(0, 200));
          return undefined;
        });
        if (st?.running) running.push(st.running.workflowId);
      }
      if (!running.length) break;
      if (Date.now() - quiesceStart > 20 * 60_000) throw new Error(`backups still running after 20 min: ${running.join(', ')}`);
      await sleep(3000);
    }
    say(`all backups closed ${((Date.now() - quiesceStart) / 1000).toFixed(0)} s after the injections stopped`);
    for (const v of vms) await v.load?.stop().catch(() => undefined);

    // ---- the checks --------------------------------------------------------------------------------
    // Every backup workflow, from visibility (closed ones; the run is over, so it has caught up).
    const listed = new Map<string, { workflowId: string; runId: string }>();
    for (let i = 0; i < 20; i++) {
      for await (const w of client.workflow.list({ query: `WorkflowType = 'backupVm'` })) listed.set(`${w.workflowId} ${w.runId}`, { workflowId: w.workflowId, runId: w.runId });
      const open = [];
      for await (const w of client.workflow.list({ query: `WorkflowType = 'backupVm' AND ExecutionStatus = 'Running'` })) open.push(w.workflowId);
      if (!open.length) break;
      await sleep(3000);
    }
    const runs: WorkflowRun[] = await readWorkflowRuns(client, [...listed.values()], 4);
    const byOutcome = new Map<string, number>();
    for (const r of runs) byOutcome.set(r.outcome, (byOutcome.get(r.outcome) ?? 0) + 1);
    const completed = runs.filter((r) => r.outcome === 'completed');
    const kinds = new Map<string, number>();
    for (const r of completed) kinds.set((r.result as BackupVmResult).kind, (kinds.get((r.result as BackupVmResult).kind) ?? 0) + 1);
    const failures = runs.filter((r) => r.outcome === 'failed' || r.outcome === 'terminated' || r.outcome === 'timed-out').map((r) => `${r.workflowId}: ${r.outcome} ${r.failure ?? ''}`);
    const cancelledIds = new Set(injections.filter((i) => i.kind === 'cancel backup' && i.done).map((i) => i.target));
    const cancelledRuns = runs.filter((r) => r.outcome === 'cancelled');
    // A backup we cancelled that completed anyway: the cancel must have come after its commit was
    // scheduled (history order is the order the workflow saw things in).
    let cancelledCommitted = 0;
    const cancelBeforeCommit: string[] = [];
    for (const r of runs.filter((x) => cancelledIds.has(x.workflowId) && x.outcome === 'completed')) {
      cancelledCommitted++;
      let cancelAt = Infinity;
      let commitAt = Infinity;
      for (const e of (await client.workflow.getHandle(r.workflowId, r.runId).fetchHistory()).events ?? []) {
        const id = Number(e.eventId);
        if (e.workflowExecutionCancelRequestedEventAttributes) cancelAt = Math.min(cancelAt, id);
        if (e.activityTaskScheduledEventAttributes?.activityType?.name === 'commitRecoveryPoint') commitAt = Math.min(commitAt, id);
      }
      if (cancelAt < commitAt) cancelBeforeCommit.push(`${r.workflowId}: cancel requested (event ${cancelAt}) before its commit was scheduled (event ${commitAt}), committed anyway`);
    }

    // Overlap: per VM, first step → last step of each backup.
    const byDs = new Map<string, ReturnType<typeof jobInterval>[]>();
    for (const r of runs) {
      const iv = jobInterval(r);
      const ds = (r.input as BackupVmInput).dataSource;
      if (iv) byDs.set(ds, [...(byDs.get(ds) ?? []), iv]);
    }
    const overlaps = [...byDs.values()].flatMap((ivs) => overlappingPairs(ivs as NonNullable<(typeof ivs)[number]>[])).map(([a, b]) => `${a.label} / ${b.label}`);
    const intervalsChecked = [...byDs.values()].reduce((s, l) => s + l.length, 0);

    // Restore: every point of every VM, bit for bit against the guest disk at checkpoint time.
    say('restoring every committed point');
    let pointsTotal = 0;
    let pointsOk = 0;
    let bytesCompared = 0;
    const restoreFailures: string[] = [];
    const agreement: string[] = [];
    const completedPoint = new Map(completed.map((r) => [(r.result as BackupVmResult).pointId, r]));
    const newest: Array<{ v: ChaosVm; pointId: string; expected: Buffer }> = [];
    const restoreStart = Date.now();
    for (const v of vms) {
      const points = await admin.listPoints(v.name);
      const rec = await lab.getVm(v.vmId);
      const region = rec.writeLoad?.region ?? { offset: 0, length: DISK };
      const expected = initialDiskContent(v.content, DISK);
      let applied = 0;
      const sorted = [...points].sort((a, b) => Number(a.annotations.guestWriteSeq) - Number(b.annotations.guestWriteSeq));
      for (const p of sorted) {
        pointsTotal++;
        const seq = Number(p.annotations.guestWriteSeq);
        if (!Number.isSafeInteger(seq)) {
          restoreFailures.push(`${v.name}/${p.pointId}: no guestWriteSeq`);
          continue;
        }
        for (; applied < seq; applied++) {
          const w = guestWrite(v.seed, applied, region.length);
          w.data.copy(expected, region.offset + w.offset);
        }
        const wf = p.backup.workflowId;
        if (!wf || !completedPoint.has(p.pointId)) agreement.push(`${v.name}/${p.pointId}: its backup ${wf ?? '(none)'} did not complete (${runs.find((r) => r.workflowId === wf)?.outcome ?? 'not found'})`);
        try {
          const parts: Buffer[] = [];
          for await (const c of await admin.openDiskStream({ dataSource: v.name, pointId: p.pointId }, v.diskId)) parts.push(c as Buffer);
          const got = Buffer.concat(parts);
          bytesCompared += got.length;
          if (got.equals(expected)) pointsOk++;
          else {
            let first = 0;
            while (first < got.length && got[first] === expected[first]) first++;
            restoreFailures.push(`${v.name}/${p.pointId} (${p.kind}, guest write ${seq}): ${got.length} bytes, differs from the disk at checkpoint time from byte ${first}`);
          }
        } catch (err) {
          restoreFailures.push(`${v.name}/${p.pointId}: ${(err as Error).message.slice(0, 200)}`);
        }
      }
      if (sorted.length) newest.push({ v, pointId: sorted[sorted.length - 1].pointId, expected: Buffer.from(expected) });
    }
    for (const r of completed) {
      const res = r.result as BackupVmResult;
      const points = await admin.listPoints(res.dataSource);
      if (!points.some((p) => p.pointId === res.pointId)) agreement.push(`${r.workflowId} completed with ${res.pointId}, not in the repository`);
    }
    const restoreMs = Date.now() - restoreStart;

    // The newest point of each VM through `hvprotect restore --to … --format raw` (a restore job run by an agent).
    say('restoring the newest point of each VM with hvprotect restore');
    const cliRestores: string[] = [];
    let cliOk = 0;
    for (const { v, pointId, expected } of newest) {
      const to = path.join(tmp, 'restore', v.name);
      await fs.mkdir(to, { recursive: true });
      const r = spawnSync(process.execPath, [CLI, 'restore', v.name, '--rp', pointId, '--host', STANDALONE, '--to', to, '--format', 'raw', '--server-dir', stateDir], { env, encoding: 'utf8', timeout: 600_000 });
      const files = existsSync(to) ? await fs.readdir(to) : [];
      if (r.status !== 0 || files.length !== 1) {
        cliRestores.push(`${v.name}/${pointId}: exit ${r.status}, files ${files.join(', ')}: ${(r.stderr || r.stdout).trim().slice(-300)}`);
        continue;
      }
      if ((await fs.readFile(path.join(to, files[0]))).equals(expected)) cliOk++;
      else cliRestores.push(`${v.name}/${pointId}: the restored raw disk differs from the disk at checkpoint time`);
    }

    // The lab: checkpoints, AVHDX files, power states.
    const leftCheckpoints: string[] = [];
    const states = new Map<string, number>();
    const notRunning: string[] = [];
    for (const v of vms) {
      const f = await lab.inspectVm(v.vmId);
      for (const c of f.checkpoints) leftCheckpoints.push(`${v.name}: ${c.checkpointId} ${c.label ?? ''}`);
      states.set(f.state, (states.get(f.state) ?? 0) + 1);
      if (f.state !== 'running') notRunning.push(`${v.name}: ${f.state}`);
    }
    const avhdx = spawnSync('find', [lab.root, '-name', '*.avhdx'], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean);

    // Sessions left in the repository (the server keeps them under its repository folder).
    const sessionsDir = path.join(stateDir, 'repository', 'sessions');
    const sessions: string[] = [];
    for (const sid of existsSync(sessionsDir) ? await fs.readdir(sessionsDir) : []) {
      if (sid.startsWith('.')) continue;
      let owner = '';
      try {
        const s = JSON.parse(await fs.readFile(path.join(sessionsDir, sid, 'session.json'), 'utf8')) as { dataSource: string; owner?: { workflowId: string } };
        owner = `${s.dataSource}, owner ${s.owner?.workflowId ?? '(none)'} ${runs.find((r) => r.workflowId === s.owner?.workflowId)?.outcome ?? ''}`;
      } catch (err) {
        owner = (err as Error).message;
      }
      sessions.push(`${sid}: ${owner}`);
    }

    // An orphan is the session keeper's to remove (it asks Temporal whether the owner still runs,
    // every 5 minutes and soon after a server start): give it one interval and count again.
    let sessionsAfterKeeper = sessions.length;
    const keeperStart = Date.now();
    while (sessionsAfterKeeper > 0 && Date.now() - keeperStart < 6 * 60_000) {
      await sleep(10_000);
      sessionsAfterKeeper = (existsSync(sessionsDir) ? await fs.readdir(sessionsDir) : []).filter((x) => !x.startsWith('.')).length;
    }
    const keeperWaitS = Math.round((Date.now() - keeperStart) / 1000);

    // verify, as an administrator runs it.
    say('hvprotect verify --read-data');
    const vr = spawnSync(process.execPath, [CLI, 'verify', '--read-data', '--json', '--server-dir', stateDir], { env, encoding: 'utf8', timeout: 1_800_000 });
    let verify: { ok: boolean; points: number; chunksChecked: number; bytesRead: number; damagedIndexes: unknown[]; damagedChunks: unknown[] } | undefined;
    try {
      verify = JSON.parse(vr.stdout);
    } catch {
      verify = undefined;
    }

    // ---- the report ------------------------------------------------------------------------------
    const count = (k: Kind) => injections.filter((i) => i.kind === k && i.done).length;
    const ownExits = supervised.flatMap((s) => s.ownExits.map((e) => `${s.name}: ${e}`));
    const checks: Array<[string, boolean, string]> = [
      ['every committed point restores bit for bit (verified reader over the storage API, against the guest disk at checkpoint time)', pointsTotal > 0 && pointsOk === pointsTotal, `${pointsOk} / ${pointsTotal} points, ${(bytesCompared / 2 ** 20).toFixed(0)} MiB compared in ${(restoreMs / 1000).toFixed(0)} s`],
      ['the newest point of each VM restores bit for bit through `hvprotect restore --to --format raw`', cliOk === newest.length && newest.length > 0, `${cliOk} / ${newest.length}`],
      ['repository and histories agree (each completed backup has its point, each point a completed backup)', agreement.length === 0, `${completed.length} completed backups, ${pointsTotal} points, ${agreement.length} disagreements`],
      ['no backup checkpoint left', leftCheckpoints.length === 0 && avhdx.length === 0, `${leftCheckpoints.length} in lab.json, ${avhdx.length} AVHDX files`],
      ['no VM paused or saved', notRunning.length === 0, [...states].map(([s, n]) => `${n} ${s}`).join(', ')],
      ['no backup session left in the repository when the last backup closed', sessions.length === 0, `${sessions.length} sessions`],
      ['…nor after the session keeper had its turn', sessionsAfterKeeper === 0, sessions.length ? `${sessionsAfterKeeper} sessions ${keeperWaitS} s later` : 'nothing to remove'],
      ['no two backups of one VM overlapped', overlaps.length === 0, `${intervalsChecked} backups with a step, ${overlaps.length} overlapping pairs`],
      ['`hvprotect verify --read-data` clean', !!verify?.ok, verify ? `${verify.points} points, ${verify.chunksChecked} chunks read and hashed (${(verify.bytesRead / 2 ** 20).toFixed(0)} MiB), ${verify.damagedIndexes.length} damaged indexes, ${verify.damagedChunks.length} damaged chunks` : `exit ${vr.status}: ${vr.stderr.slice(-300)}`],
      ['no backup failed (cancelled ones aside)', failures.length === 0, `${failures.length} failed`],
      [
        'a cancelled backup ends cancelled without a point, or completes with its point when the cancel came after the commit',
        cancelledRuns.every((r) => cancelledIds.has(r.workflowId)) && cancelledIds.size === cancelledRuns.length + cancelledCommitted && cancelBeforeCommit.length === 0 && agreement.length === 0,
        `${cancelledIds.size} cancel requests: ${cancelledRuns.length} ended cancelled, ${cancelledCommitted} completed (the cancel came after the commit was under way), ${cancelBeforeCommit.length} committed after a cancel they had seen`,
      ],
      ['no process exited by itself', ownExits.length === 0, `${ownExits.length}`],
      ['every protection answers its state query at the end', unanswered.size === 0, unanswered.size ? [...unanswered].map(([ds, e]) => `${ds}: ${e}`).join('; ') : `${VMS} / ${VMS}`],
    ];
    const allOk = checks.every(([, ok]) => ok);
    const fmtLoad = (l: number[]) => l.map((x) => x.toFixed(2)).join(' ');
    const meanLoad = loadSamples.length ? loadSamples.reduce((a, b) => a + b, 0) / loadSamples.length : NaN;
    const lines = [
      '# Chaos run',
      '',
      `Run ${new Date(t0).toISOString()} by \`node dist/bench/chaos.js ${args.filter((a) => a !== '--keep').join(' ')}\`: ` +
        `${(chaosMs / 60_000).toFixed(1)} minutes of injections, seed ${SEED}. ${VMS} lab VMs (one ${DISK / 2 ** 20} MiB disk each, 60% of its 1 MiB regions random data, ` +
        `a guest write load of one 4–64 KiB write every ~0.4 s) on the CSV of a 3-node lab cluster (${CLUSTER.join(', ')}) plus a standalone host (${STANDALONE}); ` +
        `${vms.filter((v) => v.offline).length} are Linux guests backed up offline (${vms.filter((v) => v.offline === 'pause').length} paused, ${vms.filter((v) => v.offline === 'save').length} saved for the checkpoint). ` +
        `Each protected as \`protect add\` does it (a protection workflow and a Temporal Schedule), the schedule shortened to every ${EVERY_S} s. ` +
        `Every process real and separate: the Temporal dev server (SQLite file, restarted on it), \`hvprotect server\`, one \`hvprotect agent\` per host; this script is the client, the lab's cluster admin and the guests. ` +
        `An injection every ~${GAP_S} s (exponential gaps), chosen at random by weight; killed processes come back after 1–15 s (Temporal 1–10 s). ` +
        `Then the schedules are paused, running backups finish, and everything below is checked.`,
      '',
      `**Result: ${allOk ? 'every invariant held' : 'INVARIANTS FAILED (see below)'}.**`,
      '',
      '## What held',
      '',
      '| invariant | held | numbers |',
      '| --- | --- | --- |',
      ...checks.map(([what, ok, n]) => `| ${what} | ${ok ? 'yes' : '**NO**'} | ${n} |`),
      '',
      `Backups: ${runs.length} started (${[...byOutcome].map(([o, n]) => `${n} ${o}`).join(', ')}); committed by kind: ${[...kinds].map(([k, n]) => `${n} ${k}`).join(', ')}. ` +
        `Backups closed ${((Date.now() - quiesceStart) / 1000).toFixed(0)} s after the injections stopped (quiesce + checks).`,
      '',
      ...(allOk
        ? []
        : [
            '### Failures',
            '',
            ...[...restoreFailures, ...cliRestores, ...agreement, ...leftCheckpoints, ...avhdx, ...notRunning, ...sessions.map((s) => `session ${s}`), ...overlaps.map((o) => `overlap ${o}`), ...failures, ...cancelBeforeCommit, ...ownExits]
              .slice(0, 80)
              .map((f) => `- ${f.replace(/\|/g, '\\|')}`),
            '',
          ]),
      '## What was injected',
      '',
      '| kind | injected | not injected (nothing to hit) |',
      '| --- | ---: | ---: |',
      ...(Object.keys(KINDS) as Kind[]).map((k) => `| ${k} | ${count(k)} | ${injections.filter((i) => i.kind === k && !i.done).length} |`),
      '',
      '<details><summary>Every injection, minutes:seconds after the start of the run</summary>',
      '',
      '| at | kind | target | detail |',
      '| --- | --- | --- | --- |',
      ...injections.map((i) => `| ${stamp(i.at)} | ${i.kind} | ${i.target} | ${i.detail.replace(/\|/g, '\\|')} |`),
      '',
      '</details>',
      '',
      `Machine: ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, Node ${process.version}, **shared with other engineers at the same time**: ` +
        `load average ${fmtLoad(loadAtStart)} at the start, ${meanLoad.toFixed(2)} on average during the run (1-min, sampled every 30 s), ${fmtLoad(os.loadavg())} at the end. Whole run ${((Date.now() - t0) / 60_000).toFixed(1)} min.`,
    ];
    await fs.writeFile(OUT, lines.join('\n') + '\n');
    console.log(lines.join('\n'));
    await client.connection.close();
    process.exitCode = allOk ? 0 : 1;
  } finally {
    await cleanup();
  }
}

main().then(
  () => process.exit(process.exitCode ?? 0),
  (err) => {
    console.error(err);
    process.exit(2);
  },
);
