// The Temporal Web UI is the console: in a real browser (Debian's Chromium driven by
// playwright-core), the workflow list and a backup's page show the VM, host, mode and kind.
// Screenshots are kept in test-artifacts/ui/.
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { chromium, type Browser } from 'playwright-core';
import { startTestStack, type TestStack } from '../support/stack';
import { SERVER_TASK_QUEUE } from '../../temporal/task-queues';

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

test('the workflow list and a backup page show VM, host, mode and kind', async () => {
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
  const handle = await stack.client.workflow.start('backupVm', { taskQueue: SERVER_TASK_QUEUE, workflowId, args: [{ dataSource: 'ui-linux', vm: facts.vmId }] });
  await handle.result();
  const runId = handle.firstExecutionRunId;
  const ns = stack.temporal.namespace;
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });

  // The list, filtered by our search attributes as an administrator would.
  const query = encodeURIComponent(`BackupVm="ui-linux" AND BackupMode="offline"`);
  await page.goto(`${ui}/namespaces/${ns}/workflows?query=${query}`, { waitUntil: 'networkidle' });
  await page.getByText(workflowId).first().waitFor({ timeout: 30_000 });
  await page.screenshot({ path: path.join(ARTIFACTS, 'workflow-list.png'), fullPage: true });

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
