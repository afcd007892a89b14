// `npm start` (hvprotect dev) comes up with its own Temporal dev server, its first backups of
// every sample VM (default disks: real guest file systems, see test/cli/sample-files) succeed, Ctrl-C stops it cleanly, and a second start resumes from the same state.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { connectClient, loadTemporalSettings } from '../../temporal/connection';
import { freePort } from '../../temporal/dev-server';

const CLI = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
let dir: string;
const children: ChildProcess[] = [];

async function startDev(args: string[]): Promise<{ child: ChildProcess; output: () => string; ready: Promise<void> }> {
  const child = spawn(process.execPath, [CLI, 'dev', ...args], { env: { ...process.env, HVPROTECT_LOG_FORMAT: 'json', HVPROTECT_LOG_LEVEL: 'warn' } });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const ready = new Promise<void>((resolve, reject) => {
    const t = setInterval(() => {
      if (out.includes('hvprotect is running')) {
        clearInterval(t);
        resolve();
      }
    }, 100);
    child.once('exit', (code) => {
      clearInterval(t);
      reject(new Error(`hvprotect dev exited ${code}: ${out.slice(-2000)}`));
    });
  });
  return { child, output: () => out, ready };
}

async function stop(child: ChildProcess): Promise<number | null> {
  child.kill('SIGINT');
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-npm-start-'));
});
afterAll(async () => {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      c.kill('SIGINT');
      await new Promise((r) => setTimeout(r, 5000));
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
  }
  if (!process.env.HVP_KEEP_TEST_STATE) fs.rmSync(dir, { recursive: true, force: true });
});

test('comes up, backs up every sample VM, stops on Ctrl-C and resumes on a second start', async () => {
  const port = await freePort();
  const args = ['--state-dir', dir, '--temporal-port', String(port), '--ui-port', String(await freePort()), '--api-port', '0', '--metrics-port', String(await freePort()), '--sdk-metrics-port', String(await freePort())];
  const first = await startDev(args);
  await first.ready;
  expect(first.output()).toMatch(/Web UI: +http:\/\/127\.0\.0\.1:\d+\/namespaces\/default\/workflows/);
  // The default runs encrypted: a payload key made under the state folder, and a codec server for the Web UI.
  const payloadKeys = path.join(dir, 'payload.keys');
  expect(fs.statSync(payloadKeys).mode & 0o777).toBe(0o600);
  expect(first.output()).toMatch(/Payloads: +encrypted with .*payload\.keys; the Web UI decrypts through the codec server http:\/\/127\.0\.0\.1:\d+/);
  const client = await connectClient(loadTemporalSettings({ TEMPORAL_ADDRESS: `127.0.0.1:${port}`, TEMPORAL_NAMESPACE: 'default', HVPROTECT_PAYLOAD_KEY_FILE: payloadKeys }));
  try {
    // Every first backup completes.
    let statuses: string[] = [];
    for (const deadline = Date.now() + 180_000; Date.now() < deadline; ) {
      statuses = [];
      for await (const wf of client.workflow.list({ query: "WorkflowType = 'backupVm'" })) statuses.push(wf.status.name);
      if (statuses.length >= 6 && statuses.every((s) => s === 'COMPLETED')) break;
      if (statuses.some((s) => s === 'FAILED' || s === 'TERMINATED' || s === 'TIMED_OUT')) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    expect(statuses.length).toBe(6);
    expect(statuses.every((s) => s === 'COMPLETED')).toBe(true);
    const schedules: string[] = [];
    for await (const s of client.schedule.list()) schedules.push(s.scheduleId);
    expect(schedules.sort()).toEqual(['protect/app-linux01', 'protect/file01', 'protect/smb01', 'protect/sql01', 'protect/web01', 'protect/web01-replica']);
  } finally {
    await client.connection.close();
  }
  expect(await stop(first.child)).toBe(0);

  // Second start: same state, nothing duplicated, no new first backups.
  const second = await startDev(args);
  await second.ready;
  expect(second.output()).not.toMatch(/First backups/);
  const client2 = await connectClient(loadTemporalSettings({ TEMPORAL_ADDRESS: `127.0.0.1:${port}`, TEMPORAL_NAMESPACE: 'default', HVPROTECT_PAYLOAD_KEY_FILE: path.join(dir, 'payload.keys') }));
  try {
    let n = 0;
    for await (const _ of client2.workflow.list({ query: "WorkflowType = 'backupVm'" })) n++;
    expect(n).toBe(6);
  } finally {
    await client2.connection.close();
  }
  expect(await stop(second.child)).toBe(0);
}, 400_000);
