// Bad input: one clear line on stderr that says what is wrong and what to do, non-zero exit.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'client', 'cli.js');

function hvprotect(args: string[], env: Record<string, string> = {}, timeout = 60_000) {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    timeout,
    env: { ...process.env, TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml', ...env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
}

beforeAll(() => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
});

test('an unreachable Temporal address names the address and how to start one', () => {
  const r = hvprotect(['doctor'], { TEMPORAL_ADDRESS: '127.0.0.1:1' });
  expect(r.code).toBe(1);
  expect(r.stderr.split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(/cannot reach the Temporal server at 127\.0\.0\.1:1/);
  expect(r.stderr).toMatch(/npm start/);
});

test('a malformed Temporal address says the accepted form', () => {
  const r = hvprotect(['doctor'], { TEMPORAL_ADDRESS: 'http://localhost' });
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/is not host:port/);
});

test('a missing Temporal CLI binary says how to get one', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-cli-'));
  const r = hvprotect(['dev', '--state-dir', dir, '--headless'], { HVPROTECT_TEMPORAL_CLI: path.join(dir, 'no-such-temporal') });
  expect(r.code).toBe(1);
  expect(r.stderr.split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(/HVPROTECT_TEMPORAL_CLI=.*no-such-temporal is not an executable file/);
});

test('a port in use is named with the flag that changes it', async () => {
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  const port = (blocker.address() as net.AddressInfo).port;
  try {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-cli-'));
    const r = hvprotect(['dev', '--state-dir', dir, '--temporal-port', String(port), '--headless']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`port ${port} on 127\\.0\\.0\\.1 \\(Temporal frontend gRPC\\) is already in use.*--temporal-port`));
  } finally {
    blocker.close();
  }
});

test('a wrong flag or value is a usage error (exit 2)', () => {
  expect(hvprotect(['dev', '--no-such-flag']).code).toBe(2);
  const r = hvprotect(['dev', '--temporal-port', 'abc']);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/a port is a number from 1 to 65535/);
  expect(hvprotect(['no-such-command']).code).toBe(2);
});

test('--help exits 0 and shows examples', () => {
  const r = hvprotect(['dev', '--help']);
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/Examples:/);
});
