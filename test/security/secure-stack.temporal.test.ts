// The whole stack secured, through the CLI flags an administrator uses: the protection server
// with an encryption key (`hvprotect key generate`) and the storage API on mutual TLS; a host
// agent process with --storage-ca/--storage-cert/--storage-key; admin calls with --storage-ca
// (or HVPROTECT_STORAGE_CA). A VM disk full of recognisable text is backed up; the repository
// folder does not hold that text anywhere; the restore is bit for bit.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createLogger } from '../../log/logger';
import { Lab } from '../../hypervisor/lab';
import { EncryptionKey } from '../../repository';
import { loadServerTls } from '../../storage-api';
import { loadTemporalSettings } from '../../temporal/connection';
import { startServer, type RunningServer } from '../../workers/server';
import { testNamespace } from '../support/stack';
import { makePki, type Pki } from './pki';

const MiB = 1024 * 1024;
const CLI = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
const PATTERN = 'HVPROTECT-GUEST-SECRET-5d1e';

let dir: string;
let pki: Pki;
let keyFile: string;
let lab: Lab;
let server: RunningServer;
let agent: ChildProcess;
let diskId: string;
const temporal = loadTemporalSettings({ TEMPORAL_ADDRESS: process.env.TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE: testNamespace() });

function hvp(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: {
        ...process.env,
        TEMPORAL_ADDRESS: temporal.address,
        TEMPORAL_NAMESPACE: temporal.namespace,
        TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml',
        HVPROTECT_SERVER_DIR: server?.stateDir ?? '/nonexistent',
        ...env,
      },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr: stderr.trim() }));
  });
}

async function json<T>(args: string[], env: Record<string, string> = {}): Promise<T> {
  const r = await hvp([...args, '--json'], env);
  if (r.code !== 0) throw new Error(`hvprotect ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

function mtlsEnv(): Record<string, string> {
  return { HVPROTECT_STORAGE_CA: pki.caCert, HVPROTECT_STORAGE_CERT: pki.clientCert, HVPROTECT_STORAGE_KEY: pki.clientKey };
}

function grepTree(root: string, needle: Buffer): string[] {
  const hits: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && fs.readFileSync(p).includes(needle)) hits.push(p);
    }
  };
  walk(root);
  return hits;
}

beforeAll(async () => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-secure-'));
  pki = makePki(path.join(dir, 'pki'));

  // The key, as an administrator makes it.
  const gen = await hvp(['key', 'generate']);
  expect(gen.code).toBe(0);
  keyFile = path.join(dir, 'hvprotect.key');
  fs.writeFileSync(keyFile, gen.stdout, { mode: 0o600 });
  expect(gen.stderr).toMatch(/keep a copy of this file apart from the repository/);

  lab = await Lab.open(path.join(dir, 'lab'));
  await lab.createHost('hv01');
  const facts = await lab.createVm({ name: 'sec1', host: 'hv01', disks: [{ sizeBytes: 8 * MiB, content: { kind: 'random', seed: 77, fill: 0.3 } }] });
  diskId = facts.disks[0].diskId;
  // Recognisable guest data: 1 MiB of text lines, and the marker once inside random data.
  let text = '';
  for (let i = 0; text.length < MiB; i++) text += `${PATTERN} customer record ${i} balance ${(i * 7919) % 100000}\n`;
  await lab.writeDisk('sec1', diskId, 2 * MiB, Buffer.from(text.slice(0, MiB), 'latin1'));
  const sector = Buffer.alloc(4096);
  for (let i = 0; i < sector.length; i++) sector[i] = (i * 2654435761) >>> 24;
  sector.write(PATTERN, 1234, 'latin1');
  await lab.writeDisk('sec1', diskId, 5 * MiB + 8192, sector);

  const logger = createLogger({ name: 'test', level: process.env.HVP_TEST_LOG_LEVEL ?? 'warn', format: 'json', destination: path.join(dir, 'log.jsonl') });
  server = await startServer({
    logger, temporal, stateDir: path.join(dir, 'server'), apiPort: 0, metricsPort: 0, registerSearchAttributes: false,
    apiTls: loadServerTls({ certFile: pki.serverCert, keyFile: pki.serverKey, clientCaFile: pki.caCert }),
    encryptionKey: await EncryptionKey.load(keyFile),
  });
  expect(server.storageApi.url).toMatch(/^https:/);

  const tokenFile = path.join(dir, 'hv01.token');
  fs.writeFileSync(tokenFile, await server.tokens.issue('hv01', 'agent'), { mode: 0o600 });
  const log = fs.openSync(path.join(dir, 'agent-hv01.log'), 'a');
  agent = spawn(
    process.execPath,
    [CLI, 'agent', '--host', 'hv01', '--lab-root', lab.root, '--server', `${server.id}=${tokenFile}`,
      '--storage-ca', pki.caCert, '--storage-cert', pki.clientCert, '--storage-key', pki.clientKey, '--progress-ms', '100'],
    { env: { ...process.env, TEMPORAL_ADDRESS: temporal.address, TEMPORAL_NAMESPACE: temporal.namespace, TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml', HVPROTECT_LOG_FORMAT: 'json' }, stdio: ['ignore', log, log] },
  );
});

afterAll(async () => {
  if (agent && agent.exitCode === null) {
    agent.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    if (agent.exitCode === null) agent.kill('SIGKILL');
  }
  await server?.shutdown().catch(() => undefined);
  if (!process.env.HVP_KEEP_TEST_STATE) fs.rmSync(dir, { recursive: true, force: true });
});

test('backup over mutual TLS into an encrypted repository: no guest text in the repository; restore bit for bit', async () => {
  const fp = await hvp(['key', 'fingerprint', keyFile]);
  expect(fp.stdout.trim()).toBe(server.repository.config.encryption?.keyFingerprint);

  await json(['protect', 'add', 'sec1', '--at', '03:00', '--server', server.id]);
  const b = await json<{ pointId: string; kind: string }>(['backup', 'sec1', '--wait']);
  expect(b.kind).toBe('initial-replica');

  // Admin calls: flags, and the environment.
  const points = await json<{ pointId: string }[]>(['rp', 'list', 'sec1']);
  expect(points.map((p) => p.pointId)).toEqual([b.pointId]);
  const usage = await json<{ dataSource: string }[]>(['shadowstorage', 'list', '--storage-ca', pki.caCert, '--storage-cert', pki.clientCert, '--storage-key', pki.clientKey]);
  expect(usage.map((u) => u.dataSource)).toContain('sec1');
  const v = await json<{ ok: boolean; chunksChecked: number }>(['verify', '--read-data'], mtlsEnv());
  expect(v).toMatchObject({ ok: true });
  expect(v.chunksChecked).toBeGreaterThan(0);

  // Without the CA, and without a client certificate: refused, saying what to pass.
  const noCa = await hvp(['shadowstorage', 'list']);
  expect(noCa.code).toBe(1);
  expect(noCa.stderr).toMatch(/TLS connection to the storage API at https:.* refused: .*--storage-ca/);
  const noCert = await hvp(['shadowstorage', 'list', '--storage-ca', pki.caCert]);
  expect(noCert.code).toBe(1);
  expect(noCert.stderr).toMatch(/--storage-cert/);

  // The repository folder, copied without the key: the guest text is nowhere.
  const root = server.repository.root;
  expect(grepTree(root, Buffer.from(PATTERN, 'latin1'))).toEqual([]);
  expect(grepTree(root, Buffer.from('customer record', 'latin1'))).toEqual([]);

  // Restored through the agent (mutual TLS) to a folder: bit for bit.
  const to = path.join(dir, 'restored');
  const r = await json<{ disks: { path: string }[] }>(['restore', 'sec1', '--rp', b.pointId, '--host', 'hv01', '--to', to, '--format', 'raw'], mtlsEnv());
  const restored = fs.readFileSync(r.disks[0].path);
  expect(restored.equals(await lab.readDisk('sec1', diskId, 0, 8 * MiB))).toBe(true);
  expect(restored.includes(Buffer.from(PATTERN, 'latin1'))).toBe(true);
});

test('the server refuses to start on the encrypted repository without its key or with another', async () => {
  const other = path.join(dir, 'other.key');
  fs.writeFileSync(other, (await hvp(['key', 'generate'])).stdout);
  // The running server holds the lock: open a copy of the repository instead.
  const copy = path.join(dir, 'copy');
  fs.cpSync(server.repository.root, copy, { recursive: true });
  fs.rmSync(path.join(copy, 'lock'), { force: true });
  const base = ['server', '--state-dir', path.join(dir, 'server2'), '--repository', copy, '--api-port', '0', '--metrics-port', String(20000 + Math.floor(Math.random() * 20000))];
  const wrong = await hvp([...base, '--encryption-key-file', other]);
  expect(wrong.code).toBe(1);
  expect(wrong.stderr).toMatch(/wrong encryption key/);
  const none = await hvp(base);
  expect(none.code).toBe(1);
  expect(none.stderr).toMatch(/is encrypted .*no key was given/);
  const halfTls = await hvp([...base, '--api-tls-cert', pki.serverCert]);
  expect(halfTls.code).toBe(2);
  expect(halfTls.stderr).toMatch(/both --api-tls-cert and --api-tls-key/);
});
