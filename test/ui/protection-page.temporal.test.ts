// The protection page (`/protection` on the storage API's address), in Debian's Chromium against a
// running stack: the login form (an agent token refused, the admin token accepted), the overview
// against the CLI's `status --protection --json` and `rp list --json`, a VM's page with its points,
// legible at 1280 px without scrolling sideways. Screenshots in test-artifacts/ui/.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { chromium, type Browser } from 'playwright-core';
import { startTestStack, type TestStack } from '../support/stack';
import { protectVm, startBackupNow } from '../../client/protection';

const CHROMIUM = process.env.HVPROTECT_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.resolve(__dirname, '..', '..', 'test-artifacts', 'ui');
const CLI = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
const MiB = 1024 * 1024;
const run = promisify(execFile);
let stack: TestStack;
let browser: Browser;

async function cliJson<T>(...args: string[]): Promise<T> {
  const r = await run(process.execPath, [CLI, ...args, '--json'], {
    env: { ...process.env, TEMPORAL_ADDRESS: stack.temporal.address, TEMPORAL_NAMESPACE: stack.temporal.namespace, HVPROTECT_PAYLOAD_KEY_FILE: stack.temporal.payloadKeyFile ?? '' },
  }).catch((e: { stdout?: string }) => ({ stdout: e.stdout ?? '' }));
  return JSON.parse(r.stdout) as T;
}

beforeAll(async () => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium (.ci/run does), or set HVPROTECT_CHROMIUM`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  stack = await startTestStack({ hosts: ['hv01'] });
  for (const [name, seed] of [['pg-web', 1], ['pg-sql', 2]] as const) {
    const facts = await stack.lab.createVm({ name, host: 'hv01', disks: [{ sizeBytes: 4 * MiB, content: { kind: 'random', seed, fill: 0.5 } }] });
    await protectVm(stack.client, { server: stack.server.id, vm: { vmId: facts.vmId, name, host: 'hv01', state: 'running' }, dataSource: name, schedule: { at: ['03:00'], rpoMs: name === 'pg-sql' ? 1000 : undefined } });
  }
  // pg-web: two good points; pg-sql: none, on a 1 s RPO: CRITICAL by the time the page is read.
  for (let i = 0; i < 2; i++) await (await startBackupNow(stack.client, { dataSource: 'pg-web' }, 'auto', 'test')).result();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await stack?.stop();
});

test('sign in with the admin token; the overview and a VM page say what the CLI says', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const base = stack.server.storageApi.url;
  await page.goto(`${base}/protection`);
  expect(new URL(page.url()).pathname).toBe('/protection/login');
  // An agent's token is not enough.
  await page.fill('input[name=token]', await stack.agentToken('hv01'));
  await page.click('button[type=submit]');
  expect(await page.textContent('body')).toMatch(/not an admin token of this server/);
  await page.fill('input[name=token]', stack.server.adminToken);
  await page.click('button[type=submit]');
  await page.waitForURL(`${base}/protection`);

  const rows = await page.$$eval('tr[data-ds]', (trs) =>
    trs.map((tr) => ({ ds: tr.getAttribute('data-ds'), cells: (Array.from(tr.querySelectorAll('td')) as Array<{ textContent: string | null }>).map((td) => (td.textContent ?? '').trim().replace(/\s+/g, ' ')) })),
  );
  const cli = await cliJson<Array<{ dataSource: string; level: string; lastGood?: { at: string } }>>('status', '--protection');
  for (const ds of ['pg-web', 'pg-sql']) {
    const row = rows.find((r) => r.ds === ds)!;
    const status = cli.find((c) => c.dataSource === ds)!;
    expect(row).toBeTruthy();
    expect(row.cells[2].startsWith(status.level)).toBe(true);
    expect(row.cells[3]).toBe(status.lastGood?.at ?? '-');
  }
  expect(rows.find((r) => r.ds === 'pg-sql')!.cells[2]).toMatch(/^CRITICAL\s*no recovery point yet/);
  expect(rows.find((r) => r.ds === 'pg-web')!.cells[2]).toMatch(/^OK/);
  // Next run (03:00 in the server's zone) and a link to the last job in the Web UI.
  expect(rows.find((r) => r.ds === 'pg-web')!.cells[4]).toMatch(/^\d{4}-\d\d-\d\dT/);
  const jobLink = await page.getAttribute('tr[data-ds="pg-web"] td:nth-child(7) a', 'href');
  expect(jobLink).toMatch(/\/namespaces\/.+\/workflows\/backup%2Fpg-web%2F/);
  // Legible at 1280 px: nothing to scroll sideways.
  expect(Number(await page.evaluate('document.documentElement.scrollWidth'))).toBeLessThanOrEqual(1280);
  await page.screenshot({ path: path.join(ARTIFACTS, 'protection-overview.png'), fullPage: true });

  await page.click('a[href="/protection/vm/pg-web"]');
  await page.waitForURL(`${base}/protection/vm/pg-web`);
  const points = await page.$$eval('tr[data-point]', (trs) => trs.map((tr) => tr.getAttribute('data-point')));
  const rp = await cliJson<Array<{ pointId: string }>>('rp', 'list', 'pg-web');
  expect(points).toEqual(rp.map((p) => p.pointId).reverse());
  expect(await page.$$eval('svg rect', (r) => r.length)).toBe(2);
  expect(Number(await page.evaluate('document.documentElement.scrollWidth'))).toBeLessThanOrEqual(1280);
  await page.screenshot({ path: path.join(ARTIFACTS, 'protection-vm.png'), fullPage: true });
  await page.close();
});

test('without a session or an admin bearer token the page is not served; with the bearer it is', async () => {
  const base = stack.server.storageApi.url;
  const anon = await fetch(`${base}/protection`, { redirect: 'manual' });
  expect(anon.status).toBe(303);
  expect(anon.headers.get('location')).toBe('/protection/login');
  const agent = await fetch(`${base}/protection/vm/pg-web`, { redirect: 'manual', headers: { authorization: `Bearer ${await stack.agentToken('hv01')}` } });
  expect(agent.status).toBe(303);
  const admin = await fetch(`${base}/protection`, { headers: { authorization: `Bearer ${stack.server.adminToken}` } });
  expect(admin.status).toBe(200);
  expect(admin.headers.get('content-security-policy')).toMatch(/default-src 'none'/);
  expect(await admin.text()).toMatch(/pg-web/);
});
