// syncFileSystem (repository/durable.ts): syncfs(2) through one long-lived shell per process
// instead of a `sync` spawned from the (large) server process at every commit. What must hold:
// calls are answered, each with its own outcome, in order; a failure names the folder and the
// reason; a helper that died is replaced; and the helper never keeps a process alive by itself.
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { syncFileSystem, syncHelperPid } from '../../repository/durable';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'hvp-syncfs-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

test('one helper answers every call, each with its own outcome', async () => {
  await syncFileSystem(dir);
  const pid = syncHelperPid();
  expect(pid).toBeGreaterThan(0);
  const missing = path.join(dir, 'no-such-folder');
  const outcomes = await Promise.allSettled([syncFileSystem(dir), syncFileSystem(missing), syncFileSystem(dir), syncFileSystem(missing)]);
  expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'rejected']);
  const reason = String((outcomes[1] as PromiseRejectedResult).reason);
  expect(reason).toContain(missing);
  expect(reason).toMatch(/No such file or directory/);
  // Still the same shell: no process per call.
  expect(syncHelperPid()).toBe(pid);
});

test('a helper that died is replaced at the next call, and the call in flight is told', async () => {
  await syncFileSystem(dir);
  const pid = syncHelperPid()!;
  process.kill(pid, 'SIGKILL');
  // Killed with a call in flight or before it: either that call fails naming the helper, or the
  // helper's death was seen first and the call ran on a new one. Never a call left hanging.
  await syncFileSystem(dir).catch((err: Error) => expect(err.message).toMatch(/syncfs helper|EPIPE/));
  await syncFileSystem(dir);
  expect(syncHelperPid()).not.toBe(pid);
  expect(syncHelperPid()).toBeGreaterThan(0);
});

test('a folder name with a newline still works (the old way)', async () => {
  const odd = path.join(dir, 'a\nb');
  await fs.mkdir(odd);
  await syncFileSystem(odd);
});

test('the helper does not keep a process alive', async () => {
  // A child that syncs and then has nothing left to do must exit by itself.
  const script = `require(${JSON.stringify(path.join(__dirname, '..', '..', 'dist', 'repository', 'durable.js'))}).syncFileSystem(${JSON.stringify(dir)}).then(() => console.log('synced'))`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const exited = await new Promise<number | null>((resolve) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(null);
    }, 10_000);
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve(code);
    });
  });
  expect(out.trim()).toBe('synced');
  expect(exited).toBe(0);
});
