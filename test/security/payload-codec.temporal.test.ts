// Temporal as a trust boundary (#18): with the payload codec, a backup leaves no VM name and no
// path in the Temporal dev server's SQLite database, while the same backup without the codec
// does (so the search would find them); the codec server opens what the history holds; and the
// Web UI, pointed at the codec server, shows the VM name in a real browser.
// Its own dev server (own SQLite file, Web UI with --ui-codec-endpoint): namespace "default"
// runs encrypted, "hvp-plain" without a codec.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { chromium, type Browser } from 'playwright-core';
import { Client } from '@temporalio/client';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { freePort, startDevServer, temporalCliPath, type DevServer } from '../../temporal/dev-server';
import { connectClient, connectTemporal, loadTemporalSettings, withPayloadKeyFile } from '../../temporal/connection';
import { AesGcmPayloadCodec, PayloadKeyring } from '../../temporal/payload-codec';
import { startCodecServer, type CodecServer } from '../../temporal/codec-server';
import { failureChain, startTestStack, type TestStack } from '../support/stack';
import { LabHypervisor } from '../../hypervisor/lab';
import { listProtections, protectVm, startBackupNow } from '../../client/protection';

const execFileAsync = promisify(execFile);
const CHROMIUM = process.env.HVPROTECT_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.resolve(__dirname, '..', '..', 'test-artifacts', 'ui');
const PLAIN_NS = 'hvp-plain';
// Names no other text in the database could hold.
const SECRET_VM = `payroll-db-${randomUUID().slice(0, 6)}`;
const PLAIN_VM = `ledger-vm-${randomUUID().slice(0, 6)}`;

let dir: string;
let dev: DevServer;
let codecServer: CodecServer;
let decodeCalls = 0;
let encrypted: TestStack;
let plain: TestStack;
let browser: Browser | undefined;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-codec-temporal-'));
  const keyFile = path.join(dir, 'payload.keys');
  PayloadKeyring.create(keyFile);
  const codec = AesGcmPayloadCodec.fromFile(keyFile);
  const uiPort = await freePort();
  codecServer = await startCodecServer({
    // Counts the Web UI's calls: a page that shows the name without them would not be the codec's doing.
    codec: { encode: (p) => codec.encode(p), decode: (p) => ((decodeCalls += 1), codec.decode(p)) },
    port: 0,
    allowedOrigins: [`http://127.0.0.1:${uiPort}`],
  });
  dev = await startDevServer({ dbFile: path.join(dir, 'temporal.sqlite'), port: await freePort(), uiPort, extraNamespaces: [PLAIN_NS], uiCodecEndpoint: codecServer.url, readyTimeoutMs: 120_000 });
  const base = { TEMPORAL_ADDRESS: dev.address };
  encrypted = await startTestStack({ hosts: ['hv01'], temporal: withPayloadKeyFile(loadTemporalSettings({ ...base, TEMPORAL_NAMESPACE: 'default' }), keyFile) });
  plain = await startTestStack({ hosts: ['hv01'], temporal: loadTemporalSettings({ ...base, TEMPORAL_NAMESPACE: PLAIN_NS }) });
}, 240_000);

afterAll(async () => {
  await browser?.close();
  await encrypted?.stop();
  await plain?.stop();
  await dev?.stop();
  await codecServer?.close();
  if (!process.env.HVP_KEEP_TEST_STATE) fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * Every byte the dev server's SQLite database holds (main file, WAL, shared memory, a rollback
 * journal). SQLite creates and deletes its journal while it writes: one listed a moment ago may
 * be gone when it is read (its bytes are in the main file by then).
 */
function databaseBytes(): Buffer {
  const base = path.basename(dev.dbFile);
  const dir = path.dirname(dev.dbFile);
  const read = (f: string): Buffer => {
    try {
      return fs.readFileSync(path.join(dir, f));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return Buffer.alloc(0);
      throw err;
    }
  };
  return Buffer.concat(fs.readdirSync(dir).filter((f) => f.startsWith(base) && !f.endsWith('.log')).map(read));
}

async function backUp(stack: TestStack, name: string, dataSource: string) {
  const facts = await stack.lab.createVm({ name, host: 'hv01', disks: [{ sizeBytes: 2 * 1024 * 1024, content: { kind: 'random', seed: 7, fill: 0.5 } }] });
  const workflowId = `backup/${dataSource}/${new Date().toISOString()}-${randomUUID().slice(0, 4)}`;
  const handle = await stack.client.workflow.start('backupVm', { taskQueue: stack.server.taskQueue, workflowId, args: [{ dataSource, vm: facts.vmId }] });
  const result = (await handle.result()) as { pointId?: string };
  return { facts, workflowId, runId: handle.firstExecutionRunId, result };
}

let secretRun: Awaited<ReturnType<typeof backUp>>;

test('with the codec a backup leaves no VM name or path in Temporal\'s SQLite; without it the same backup does', async () => {
  // Data source ids are in workflow ids (plain text by design): they are not the VM names here.
  secretRun = await backUp(encrypted, SECRET_VM, 'ds-sealed');
  const plainRun = await backUp(plain, PLAIN_VM, 'ds-open');
  expect(secretRun.result.pointId).toBeTruthy();
  expect(plainRun.result.pointId).toBeTruthy();
  // Paths: each stack's folder (lab disks, configs, repository) is under its own temp folder.
  const secretPath = path.basename(encrypted.dir);
  const plainPath = path.basename(plain.dir);
  // Visibility and history writes land in the WAL within moments; look until the plain run shows.
  let db = databaseBytes();
  for (const deadline = Date.now() + 20_000; !(db.includes(PLAIN_VM) && db.includes(plainPath)) && Date.now() < deadline; ) {
    await new Promise((r) => setTimeout(r, 500));
    db = databaseBytes();
  }
  expect(db.includes(PLAIN_VM)).toBe(true);
  expect(db.includes(plainPath)).toBe(true);
  expect(db.includes('ds-sealed')).toBe(true); // the encrypted run is in there too
  expect(db.includes(SECRET_VM)).toBe(false);
  expect(db.includes(secretPath)).toBe(false);
});

test('the codec server opens the payloads the history holds, for hvprotect\'s HTTP contract and for `temporal workflow show --codec-endpoint`', async () => {
  // A client without the codec sees what Temporal stores: sealed payloads.
  const connection = await connectTemporal({ address: dev.address });
  try {
    const raw = new Client({ connection, namespace: 'default' });
    const history = await raw.workflow.getHandle(secretRun.workflowId).fetchHistory();
    const sealed: Payload[] = [];
    for (const e of history.events ?? []) {
      sealed.push(...((e.activityTaskCompletedEventAttributes?.result?.payloads ?? []) as Payload[]));
      sealed.push(...((e.workflowExecutionCompletedEventAttributes?.result?.payloads ?? []) as Payload[]));
    }
    expect(sealed.length).toBeGreaterThan(1);
    expect(sealed.every((p) => Buffer.from(p.metadata!.encoding!).toString() === 'binary/encrypted')).toBe(true);
    const toJson = (p: Payload) => ({
      metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
      data: Buffer.from(p.data ?? []).toString('base64'),
    });
    const res = await fetch(`${codecServer.url}/decode`, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Namespace': 'default' }, body: JSON.stringify({ payloads: sealed.map(toJson) }) });
    expect(res.status).toBe(200);
    const opened = ((await res.json()) as { payloads: { metadata: Record<string, string>; data: string }[] }).payloads.map((p) =>
      defaultPayloadConverter.fromPayload({ metadata: Object.fromEntries(Object.entries(p.metadata).map(([k, v]) => [k, Buffer.from(v, 'base64')])), data: Buffer.from(p.data, 'base64') }),
    );
    const text = JSON.stringify(opened);
    expect(text).toContain(SECRET_VM);
    expect(text).toContain(path.basename(encrypted.dir));
  } finally {
    await connection.close();
  }
  // hvprotect's client without a key file fails naming the key and the flag, not "Unknown encoding".
  const keyless = await connectClient(loadTemporalSettings({ TEMPORAL_ADDRESS: dev.address, TEMPORAL_NAMESPACE: 'default' }));
  try {
    await expect(keyless.workflow.getHandle(secretRun.workflowId).result()).rejects.toThrow(/payload key "pk-[^"]+", and this process has no payload key file: pass --payload-key-file/);
  } finally {
    await keyless.connection.close();
  }
  // Temporal's own CLI: sealed without the codec server, the VM name with it.
  // (Asynchronously: the codec server answers from this process.)
  const show = async (extra: string[]) =>
    (await execFileAsync(temporalCliPath({ install: false }), ['workflow', 'show', '--address', dev.address, '--namespace', 'default', '-w', secretRun.workflowId, '--output', 'json', ...extra], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 60_000 })).stdout;
  // Its JSON output keeps payload data in base64: read every payload's data.
  const payloadData = (json: string) => [...json.matchAll(/"data": "([A-Za-z0-9+/=]*)"/g)].map((m) => Buffer.from(m[1], 'base64').toString('utf8')).join('\n');
  const sealedShow = await show([]);
  expect(sealedShow).toContain(Buffer.from('binary/encrypted').toString('base64'));
  expect(payloadData(sealedShow)).not.toContain(SECRET_VM);
  const openedShow = await show(['--codec-endpoint', `${codecServer.url}/{namespace}`]);
  expect(openedShow).not.toContain(Buffer.from('binary/encrypted').toString('base64'));
  expect(payloadData(openedShow)).toContain(SECRET_VM);
});

test('the Web UI pointed at the codec server shows the VM name of an encrypted backup', async () => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium (.ci/run does), or set HVPROTECT_CHROMIUM`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1200 } });
  const before = decodeCalls;
  await page.goto(`${dev.uiUrl}/namespaces/default/workflows/${encodeURIComponent(secretRun.workflowId)}/${secretRun.runId}/history`, { waitUntil: 'networkidle' });
  await page.getByText('backupVm').first().waitFor({ timeout: 30_000 });
  // The result (and the activity results in the history) name the VM once decoded.
  let found = false;
  for (const deadline = Date.now() + 30_000; !found && Date.now() < deadline; ) {
    for (const label of ['Input and Results', 'Input & Results', 'Result', 'Expand all']) {
      const el = page.getByText(label, { exact: true }).first();
      if (await el.isVisible().catch(() => false)) await el.click().catch(() => undefined);
    }
    found = (await page.locator('body').innerText()).includes(SECRET_VM);
    if (!found) await page.waitForTimeout(1000);
  }
  await page.screenshot({ path: path.join(ARTIFACTS, 'codec-decoded-backup.png'), fullPage: true });
  expect(decodeCalls).toBeGreaterThan(before);
  expect(found).toBe(true);
});

test('an agent process (`hvprotect agent` given the key file) serves an encrypted backup, and its VM name stays out of the database too', async () => {
  await encrypted.stopAgent('hv01');
  await encrypted.spawnAgent('hv01', ['--payload-key-file', encrypted.temporal.payloadKeyFile!]);
  const name = `hr-share-${randomUUID().slice(0, 6)}`;
  const run = await backUp(encrypted, name, 'ds-sealed-2');
  expect(run.result.pointId).toBeTruthy();
  expect((run.result as { vmName?: string }).vmName).toBe(name);
  await new Promise((r) => setTimeout(r, 2000));
  expect(databaseBytes().includes(name)).toBe(false);
});

test('a protected VM (protection workflow, schedule, a backup through the protection) leaves no VM name in the database; without the codec it does', async () => {
  const protectAndBackUp = async (stack: TestStack, name: string, dataSource: string) => {
    const facts = await stack.lab.createVm({ name, host: 'hv01', disks: [{ sizeBytes: 1024 * 1024, content: { kind: 'random', seed: 9, fill: 0.5 } }] });
    const p = await protectVm(stack.client, { vm: { vmId: facts.vmId, name: facts.name, host: facts.host, state: facts.state }, dataSource, schedule: { at: ['03:00'] } });
    const result = (await (await startBackupNow(stack.client, p)).result()) as { vmName?: string };
    expect(result.vmName).toBe(name);
    // The client with the key reads the protection back by the VM's name (from the sealed memo).
    expect((await listProtections(stack.client)).find((x) => x.dataSource === dataSource)?.vm).toBe(name);
  };
  const sealedName = `legal-fs-${randomUUID().slice(0, 6)}`;
  const openName = `open-fs-${randomUUID().slice(0, 6)}`;
  await protectAndBackUp(encrypted, sealedName, 'ds-protected-sealed');
  await protectAndBackUp(plain, openName, 'ds-protected-open');
  let db = databaseBytes();
  for (const deadline = Date.now() + 20_000; !db.includes(openName) && Date.now() < deadline; ) {
    await new Promise((r) => setTimeout(r, 500));
    db = databaseBytes();
  }
  expect(db.includes(openName)).toBe(true);
  expect(db.includes('ds-protected-sealed')).toBe(true);
  expect(db.includes(sealedName)).toBe(false);
});

test('failure messages are sealed too: a restore refused for naming a VM\'s own folder leaves that VM\'s name out of the database', async () => {
  const refusedRestore = async (stack: TestStack, vmId: string, dataSource: string) => {
    const live = (await (await LabHypervisor.open(stack.lab, 'hv01')).inspectVm(vmId)).disks[0].path;
    const handle = await stack.client.workflow.start('restoreVm', {
      taskQueue: stack.server.taskQueue,
      workflowId: `restore/${dataSource}/${randomUUID().slice(0, 8)}`,
      args: [{ dataSource, target: { kind: 'export', host: 'hv01', dir: path.dirname(live), format: 'raw' } }],
    });
    return failureChain(await handle.result().then(() => undefined, (err: unknown) => err));
  };
  const plainVm = `refused-open-${randomUUID().slice(0, 6)}`;
  const plainRun = await backUp(plain, plainVm, 'ds-refused-open');
  const sealed = await refusedRestore(encrypted, secretRun.facts.vmId, 'ds-sealed');
  const open = await refusedRestore(plain, plainRun.facts.vmId, 'ds-refused-open');
  // The client with the key reads the message; so does the plain one.
  expect(sealed.types).toContain('RestoreTargetRefused');
  expect(sealed.text).toContain(`holds the disks or configuration of VM ${SECRET_VM}`);
  expect(open.text).toContain(`holds the disks or configuration of VM ${plainVm}`);
  await new Promise((r) => setTimeout(r, 2000));
  const db = databaseBytes();
  expect(db.includes(`holds the disks or configuration of VM ${plainVm}`)).toBe(true);
  expect(db.includes(SECRET_VM)).toBe(false);
});
