// The CLI end to end as an administrator uses it, against the real stack: protect, back up,
// list, restore, verify, shadow storage, pause/resume, and every usage error.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { startTestStack, type TestStack } from '../support/stack';
import { initialDiskContent } from '../../hypervisor/lab';

const MiB = 1024 * 1024;
const CLI = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
let stack: TestStack;
const content = { kind: 'random' as const, seed: 41, fill: 0.5 };

function hvp(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: {
        ...process.env,
        TEMPORAL_ADDRESS: stack.temporal.address,
        TEMPORAL_NAMESPACE: stack.temporal.namespace,
        HVPROTECT_SERVER_DIR: stack.server.stateDir,
        TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml',
      },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr: stderr.trim() }));
  });
}

async function json<T>(args: string[]): Promise<T> {
  const r = await hvp([...args, '--json']);
  if (r.code !== 0) throw new Error(`hvprotect ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

beforeAll(async () => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  stack = await startTestStack({ hosts: ['hv01', 'hv02'] });
  await stack.lab.createVm({ name: 'web9', host: 'hv01', disks: [{ sizeBytes: 8 * MiB, content }] });
});
afterAll(async () => {
  await stack?.stop();
});

test('protect, back up with --wait, list points, restore raw, verify', async () => {
  const p = await json<{ dataSource: string; spec: string }>(['protect', 'add', 'web9', '--at', '03:00', '--max-points', '5', '--server', stack.server.id]);
  // In the server's zone (this machine's), started up to 30 minutes late (the jitter of a daily schedule).
  expect(p).toMatchObject({ dataSource: 'web9', spec: `daily at 03:00 ${Intl.DateTimeFormat().resolvedOptions().timeZone}, started within 30 min` });
  const list = await json<{ dataSource: string; paused: boolean }[]>(['protect', 'list']);
  expect(list.map((x) => x.dataSource)).toContain('web9');

  const b = await json<{ pointId: string; kind: string; mode: string }>(['backup', 'web9', '--wait']);
  expect(b).toMatchObject({ kind: 'initial-replica', mode: 'online' });
  const points = await json<{ pointId: string }[]>(['rp', 'list', 'web9']);
  expect(points.map((x) => x.pointId)).toEqual([b.pointId]);

  const dir = path.join(stack.dir, 'cli-restore');
  const r = await json<{ disks: { path: string }[] }>(['restore', 'web9', '--rp', b.pointId, '--host', 'hv02', '--to', dir, '--format', 'raw']);
  expect(fs.readFileSync(r.disks[0].path).equals(initialDiskContent(content, 8 * MiB))).toBe(true);

  const v = await json<{ ok: boolean; chunksChecked: number }>(['verify', '--read-data']);
  expect(v.ok).toBe(true);
  expect(v.chunksChecked).toBeGreaterThan(0);

  const status = await json<{ workflowId: string; link: string; vm: string }[]>(['status']);
  const job = status.find((s) => s.workflowId.startsWith('backup/web9/'));
  expect(job?.vm).toBe('web9');
  expect(job?.link).toMatch(/^http:\/\/.+\/namespaces\/hvp-test-\d+\/workflows\/backup%2Fweb9%2F/);
});

test('shadow storage and deleting the oldest point, as vssadmin does', async () => {
  await json(['backup', 'web9', '--wait']);
  const before = await json<{ pointId: string }[]>(['rp', 'list', 'web9']);
  expect(before.length).toBeGreaterThanOrEqual(2);
  await json(['shadowstorage', 'resize', '--for', 'web9', '--maxsize', '15%']);
  const ss = await json<{ dataSource: string; maxSize: string; points: number }[]>(['shadowstorage', 'list', '--for', 'web9']);
  expect(ss[0]).toMatchObject({ dataSource: 'web9', maxSize: '15%', points: before.length });
  const del = await json<{ pointId: string }>(['shadows', 'delete', '--for', 'web9', '--oldest']);
  expect(del.pointId).toBe(before[0].pointId);
  const after = await json<{ pointId: string }[]>(['rp', 'list', 'web9']);
  expect(after.map((x) => x.pointId)).toEqual(before.slice(1).map((x) => x.pointId));
  const gc = await hvp(['gc', '--json']);
  expect(gc.code).toBe(0);
});

test('pause and resume a protection', async () => {
  expect((await json<{ paused: boolean }>(['protect', 'pause', 'web9'])).paused).toBe(true);
  expect((await json<{ dataSource: string; paused: boolean }[]>(['protect', 'list'])).find((x) => x.dataSource === 'web9')?.paused).toBe(true);
  expect((await json<{ paused: boolean }>(['protect', 'resume', 'web9'])).paused).toBe(false);
});

test('errors a person can act on', async () => {
  const unknown = await hvp(['protect', 'add', 'web8']);
  expect(unknown.code).toBe(1);
  expect(unknown.stderr).toMatch(/no VM named "web8".*did you mean "web9"/);

  const notProtected = await hvp(['backup', 'webx']);
  expect(notProtected.code).toBe(2);
  expect(notProtected.stderr).toMatch(/"webx" is not a protected VM/);

  const size = await hvp(['shadowstorage', 'add', '--for', 'web9', '--maxsize', '12XB']);
  expect(size.code).toBe(2);
  expect(size.stderr).toMatch(/UNBOUNDED/);

  const noTarget = await hvp(['restore', 'web9']);
  expect(noTarget.code).toBe(2);
  expect(noTarget.stderr).toMatch(/exactly one of --original, --host H, or --to DIR/);

  const badTime = await hvp(['protect', 'add', 'web9', '--at', '25:00']);
  expect(badTime.code).toBe(2);
  expect(badTime.stderr).toMatch(/HH:MM/);

  expect((await hvp(['backup'])).code).toBe(2);
  expect((await hvp(['protect', 'add', 'web9', '--every', '0'])).code).toBe(2);
  expect((await hvp(['restore', 'web9', '--to', '/tmp/x'])).code).toBe(2);
});
