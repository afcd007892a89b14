// The fault matrix: the agent or the protection server is killed (SIGKILL, from a crash point)
// at each step of a backup — while an offline VM is saved or paused for its checkpoint, after the
// checkpoint, mid-transfer, before and after the release, after planning, before and after the
// commit — and restarted. Every backup must finish with a
// recovery point that restores bit for bit, and leave no checkpoint and no paused VM behind.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Client } from '@temporalio/client';
import { connectClient, loadTemporalSettings } from '../../temporal/connection';
import { freePort } from '../../temporal/dev-server';
import { Lab, initialDiskContent } from '../../hypervisor/lab';
import { StorageClient } from '../../storage-api/client';
import { testNamespace } from '../support/stack';
import type { BackupVmResult } from '../../workflows/backup-vm';
import { serverTaskQueue } from '../../temporal/task-queues';
import type { CrashPointName } from '../../faults/crash-point';

const MiB = 1024 * 1024;
const CLI = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
let dir: string;
let lab: Lab;
let client: Client;
let apiPort: number;
let metricsPort: number;
const env = () => ({ ...process.env, TEMPORAL_ADDRESS: process.env.TEMPORAL_ADDRESS!, TEMPORAL_NAMESPACE: testNamespace(), HVPROTECT_LOG_FORMAT: 'json', TEMPORAL_CONFIG_FILE: '/nonexistent' });
const procs: { server?: ChildProcess; agent?: ChildProcess } = {};

function log(name: string) {
  return fs.openSync(path.join(dir, `${name}.log`), 'a');
}

async function startServer(crashAt?: CrashPointName): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [CLI, 'server', '--id', 'crash01', '--state-dir', path.join(dir, 'server'), '--api-port', String(apiPort), '--metrics-port', String(metricsPort)],
    { env: { ...env(), ...(crashAt ? { HVPROTECT_CRASH_AT: crashAt } : {}) }, stdio: ['ignore', log('server'), log('server')] },
  );
  procs.server = child;
  // Ready when the storage API answers.
  for (const deadline = Date.now() + 60_000; ; ) {
    if (child.exitCode !== null) throw new Error(`server exited ${child.exitCode}: ${fs.readFileSync(path.join(dir, 'server.log'), 'utf8').slice(-2000)}`);
    const ok = await fetch(`http://127.0.0.1:${apiPort}/v1/chunks/missing`, { method: 'POST' }).then((r) => r.status === 401, () => false);
    if (ok) return child;
    if (Date.now() > deadline) throw new Error('server did not come up');
    await new Promise((r) => setTimeout(r, 200));
  }
}

function startAgent(crashAt?: CrashPointName): ChildProcess {
  const child = spawn(
    process.execPath,
    [CLI, 'agent', '--host', 'hv01', '--lab-root', lab.root, '--server', `crash01=${path.join(dir, 'hv01.token')}`, '--batch-slots', '4', '--throttle', '16'],
    { env: { ...env(), ...(crashAt ? { HVPROTECT_CRASH_AT: crashAt } : {}) }, stdio: ['ignore', log('agent'), log('agent')] },
  );
  procs.agent = child;
  return child;
}

function exited(child: ChildProcess): Promise<NodeJS.Signals | null> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(child.signalCode) : child.once('exit', (_c, s) => resolve(s))));
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-crash-'));
  lab = await Lab.open(path.join(dir, 'lab'));
  await lab.createHost('hv01');
  apiPort = await freePort();
  metricsPort = await freePort();
  await startServer();
  const r = spawnSync(process.execPath, [CLI, 'token', 'issue', '--host', 'hv01', '--server-dir', path.join(dir, 'server')], { env: env(), encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`token issue failed: ${r.stderr}`);
  fs.writeFileSync(path.join(dir, 'hv01.token'), r.stdout.trim(), { mode: 0o600 });
  startAgent();
  client = await connectClient(loadTemporalSettings(env()));
});

afterAll(async () => {
  for (const p of [procs.agent, procs.server]) if (p && p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  await client?.connection.close();
  if (!process.env.HVP_KEEP_TEST_STATE) fs.rmSync(dir, { recursive: true, force: true });
});

const CASES: { at: CrashPointName; who: 'agent' | 'server'; offline: 'pause' | 'save' | false }[] = [
  // Between quiescing the VM and resuming it: the VM is saved or paused, the checkpoint labelled, no disks yet.
  { at: 'lab:checkpoint-quiesced', who: 'agent', offline: 'save' },
  { at: 'lab:checkpoint-quiesced', who: 'agent', offline: 'pause' },
  { at: 'agent:after-checkpoint', who: 'agent', offline: 'pause' },
  { at: 'agent:mid-transfer', who: 'agent', offline: false },
  { at: 'agent:before-release', who: 'agent', offline: 'pause' },
  { at: 'agent:after-release', who: 'agent', offline: false },
  { at: 'server:after-plan', who: 'server', offline: false },
  { at: 'server:before-commit', who: 'server', offline: false },
  { at: 'server:after-commit', who: 'server', offline: false },
];

test.each(CASES)('kill -9 of the $who at $at (offline method: $offline): the backup finishes whole', async ({ at, who, offline }) => {
  const name = `crash-${at.replace(/[^a-z]+/g, '-')}${offline ? `-${offline}` : ''}`;
  const content = { kind: 'random' as const, seed: name.length * 7, fill: 1 };
  const facts = await lab.createVm({
    name,
    host: 'hv01',
    disks: [{ sizeBytes: 12 * MiB, content }],
    ...(offline ? { guestOs: 'Debian 12', guestOsFamily: 'linux' as const } : {}),
  });
  // Restart the process in question with the crash point armed.
  if (who === 'agent') {
    procs.agent!.kill('SIGTERM');
    await exited(procs.agent!);
    startAgent(at);
  } else {
    procs.server!.kill('SIGTERM');
    await exited(procs.server!);
    await startServer(at);
  }
  const handle = await client.workflow.start('backupVm', {
    taskQueue: serverTaskQueue('crash01'),
    workflowId: `backup/${name}/${randomUUID()}`,
    args: [{ dataSource: name, vm: facts.vmId, policy: { offlineMethod: offline || 'pause' }, timing: { heartbeatTimeout: '3 seconds' } }],
  });
  const victim = who === 'agent' ? procs.agent! : procs.server!;
  const signal = await Promise.race([exited(victim), new Promise((r) => setTimeout(() => r('timeout'), 60_000))]);
  expect(signal).toBe('SIGKILL');
  if (at === 'lab:checkpoint-quiesced') {
    // The crash landed in the window: the VM quiet, its checkpoint labelled with the backup, no disks yet.
    const rec = await lab.getVm(facts.vmId);
    expect(rec.state).toBe(offline === 'save' ? 'saved' : 'paused');
    expect(rec.checkpoint).toMatchObject({ label: handle.workflowId, pending: true, disks: [] });
  }
  if (who === 'agent') startAgent();
  else await startServer();

  const r = (await handle.result()) as BackupVmResult;
  expect(r.mode).toBe(offline ? 'offline' : 'online');
  const storage = new StorageClient(`http://127.0.0.1:${apiPort}`, fs.readFileSync(path.join(dir, 'server', 'admin.token'), 'utf8').trim());
  const points = await storage.listPoints(name);
  expect(points.map((p) => p.pointId)).toEqual([r.pointId]);
  const parts: Buffer[] = [];
  for await (const c of await storage.openDiskStream({ dataSource: name, pointId: r.pointId }, facts.disks[0].diskId)) parts.push(c as Buffer);
  expect(Buffer.concat(parts).equals(initialDiskContent(content, 12 * MiB))).toBe(true);
  const after = await lab.inspectVm(name);
  expect(after.checkpoints).toEqual([]);
  expect(after.state).toBe('running');
});
