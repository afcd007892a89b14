// The Temporal Web UI is the console: in a real browser (Debian's Chromium driven by
// playwright-core), the workflow list and a backup's page show the VM, host, mode and kind.
// Screenshots are kept in test-artifacts/ui/.
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { chromium, type Browser } from 'playwright-core';
import { startTestStack, type TestStack } from '../support/stack';

const CHROMIUM = process.env.HVPROTECT_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.resolve(__dirname, '..', '..', 'test-artifacts', 'ui');
let stack: TestStack;
let browser: Browser;

beforeAll(async () => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium (.ci/run does), or set HVPROTECT_CHROMIUM`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  stack = await startTestStack({ hosts: ['hv01'] });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
afterAll(async () => {
  await browser?.close();
  await stack?.stop();
});

/** Reloads until the page text holds `wanted` (visibility lags behind a finished workflow). */
async function waitForText(load: () => Promise<string>, wanted: string): Promise<string> {
  for (const deadline = Date.now() + 30_000; ; ) {
    const text = await load();
    if (text.includes(wanted) || Date.now() > deadline) return text;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

test('the workflow list filtered by BackupVm and BackupMode shows the offline backup and leaves the online one out; a backup page shows VM, host, mode and kind', async () => {
  const ui = process.env.HVP_TEST_TEMPORAL_UI;
  expect(ui).toBeTruthy();
  const facts = await stack.lab.createVm({
    name: 'ui-linux',
    host: 'hv01',
    guestOs: 'Debian 12',
    guestOsFamily: 'linux',
    disks: [{ sizeBytes: 4 * 1024 * 1024, content: { kind: 'random', seed: 61, fill: 0.5 } }],
  });
  const workflowId = `backup/ui-linux/${new Date().toISOString()}-${randomUUID().slice(0, 4)}`;
  const handle = await stack.client.workflow.start('backupVm', { taskQueue: stack.server.taskQueue, workflowId, args: [{ dataSource: 'ui-linux', vm: facts.vmId }] });
  await handle.result();
  // A second VM backed up online: the filters below must leave it out.
  const other = await stack.lab.createVm({ name: 'ui-windows', host: 'hv01', disks: [{ sizeBytes: 1024 * 1024, content: { kind: 'random', seed: 62, fill: 1 } }] });
  const otherId = `backup/ui-windows/${new Date().toISOString()}-${randomUUID().slice(0, 4)}`;
  const online = await stack.client.workflow.execute('backupVm', { taskQueue: stack.server.taskQueue, workflowId: otherId, args: [{ dataSource: 'ui-windows', vm: other.vmId }] });
  expect(online.mode).toBe('online');
  const runId = handle.firstExecutionRunId;
  const ns = stack.temporal.namespace;
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const listed = async (query: string): Promise<string> => {
    await page.goto(`${ui}/namespaces/${ns}/workflows?query=${encodeURIComponent(query)}`, { waitUntil: 'networkidle' });
    await page.getByText(workflowId).first().waitFor({ timeout: 30_000 });
    return page.locator('body').innerText();
  };

  // Unfiltered (both backups' kind), both are listed: what the filters leave out would show.
  expect(await waitForText(() => listed(`BackupKind="initial-replica"`), otherId)).toContain(workflowId);
  // The list, filtered by our search attributes as an administrator would: only the offline backup.
  const offlineOnly = await listed(`BackupVm="ui-linux" AND BackupMode="offline"`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'workflow-list.png'), fullPage: true });
  expect(offlineOnly).not.toContain(otherId);
  expect(await listed(`BackupMode="offline"`)).not.toContain(otherId);

  // One backup: its search attributes and activity summaries.
  await page.goto(`${ui}/namespaces/${ns}/workflows/${encodeURIComponent(workflowId)}`, { waitUntil: 'networkidle' });
  await page.getByText('backupVm').first().waitFor({ timeout: 30_000 });
  await page.screenshot({ path: path.join(ARTIFACTS, 'backup-workflow.png'), fullPage: true });
  // Expand whatever holds the search attributes, then read the page.
  for (const label of ['Search Attributes', 'Metadata', 'Summary & Details', 'Details']) {
    const el = page.getByText(label, { exact: true }).first();
    if (await el.isVisible().catch(() => false)) await el.click().catch(() => undefined);
  }
  await page.waitForTimeout(500);
  await page.screenshot({ path: path.join(ARTIFACTS, 'backup-workflow-details.png'), fullPage: true });
  const text = await page.locator('body').innerText();
  for (const expected of ['BackupVm', 'ui-linux', 'BackupHost', 'hv01', 'BackupMode', 'offline', 'BackupKind', 'initial-replica']) {
    expect(text).toContain(expected);
  }
  // Activity summaries in the event history.
  await page.goto(`${ui}/namespaces/${ns}/workflows/${encodeURIComponent(workflowId)}/${runId}/history`, { waitUntil: 'networkidle' });
  await page.waitForTimeout(1500);
  await page.screenshot({ path: path.join(ARTIFACTS, 'backup-history.png'), fullPage: true });
  await page.getByText(/initial-replica of ui-linux disk/).first().waitFor({ timeout: 30_000 });
});
