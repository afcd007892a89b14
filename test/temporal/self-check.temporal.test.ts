// A workflow runs on the real dev server started for this test run, on a real protection
// server worker, and our search attributes are visible through describe and list.
import { randomUUID } from 'node:crypto';
import type { Client } from '@temporalio/client';
import { connectClient } from '../../temporal/connection';
import { SA, SEARCH_ATTRIBUTE_NAMES } from '../../temporal/search-attributes';
import { startServer, type RunningServer } from '../../workers/server';
import { createLogger } from '../../log/logger';

let client: Client;
let server: RunningServer;
const serverId = `test-${randomUUID().slice(0, 8)}`;
const taskQueue = `hvprotect-server-${serverId}`;

beforeAll(async () => {
  client = await connectClient();
  const os = await import('node:os');
  const fs = await import('node:fs');
  const path = await import('node:path');
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-selfcheck-'));
  server = await startServer({ logger: createLogger({ name: 'test', level: 'warn' }), id: serverId, stateDir, apiPort: 0 });
});

afterAll(async () => {
  await server?.shutdown();
  await client?.connection.close();
});

test('the server registered every custom search attribute', async () => {
  const resp = await client.connection.operatorService.listSearchAttributes({ namespace: client.options.namespace });
  expect(Object.keys(resp.customAttributes)).toEqual(expect.arrayContaining(SEARCH_ATTRIBUTE_NAMES));
});

test('selfCheck runs on the protection server and its search attributes are visible', async () => {
  const workflowId = `self-check/test-${randomUUID()}`;
  const handle = await client.workflow.start('selfCheck', {
    taskQueue,
    workflowId,
    typedSearchAttributes: [{ key: SA.dataSource, value: `ds-${workflowId}` }],
  });
  const result = (await handle.result()) as { server: { taskQueue: string; pid: number } };
  expect(result.server.taskQueue).toBe(taskQueue);
  expect(result.server.pid).toBe(process.pid);

  const described = await handle.describe();
  expect(described.typedSearchAttributes.get(SA.kind)).toBe('self-check');
  expect(described.typedSearchAttributes.get(SA.dataSource)).toBe(`ds-${workflowId}`);
  expect(described.typedSearchAttributes.get(SA.host)).toBeTruthy();

  // Visibility is eventually consistent: poll the list API with a query on our attributes.
  const query = `BackupKind = 'self-check' AND BackupDataSource = 'ds-${workflowId}'`;
  let ids: string[] = [];
  for (let i = 0; i < 50 && ids.length === 0; i++) {
    ids = [];
    for await (const wf of client.workflow.list({ query })) ids.push(wf.workflowId);
    if (ids.length === 0) await new Promise((r) => setTimeout(r, 200));
  }
  expect(ids).toEqual([workflowId]);
});

test('registration is idempotent on an existing database', async () => {
  const { registerSearchAttributes } = await import('../../temporal/search-attributes');
  const { added } = await registerSearchAttributes(client.connection as never, client.options.namespace);
  expect(added).toEqual([]);
});

test('on an existing database without our attributes, registration adds them, once', async () => {
  // start-dev's --search-attribute flag is for fresh databases; a database made without it
  // (or any real cluster) only gets them through the operator API.
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const { startDevServer, freePort } = await import('../../temporal/dev-server');
  const { registerSearchAttributes } = await import('../../temporal/search-attributes');
  const { loadTemporalSettings } = await import('../../temporal/connection');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-sa-'));
  const dbFile = path.join(dir, 'temporal.sqlite');
  const port = await freePort();
  const bare = { dbFile, port, headless: true, searchAttributeFlags: false, registerSearchAttributes: false };
  let dev = await startDevServer(bare);
  try {
    await dev.stop();
    dev = await startDevServer(bare);
    const c = await connectClient(loadTemporalSettings({ TEMPORAL_ADDRESS: dev.address }));
    try {
      const before = await c.connection.operatorService.listSearchAttributes({ namespace: 'default' });
      expect(Object.keys(before.customAttributes)).not.toContain('BackupVm');
      const first = await registerSearchAttributes(c.connection as never, 'default');
      expect(first.added.sort()).toEqual([...SEARCH_ATTRIBUTE_NAMES].sort());
      const second = await registerSearchAttributes(c.connection as never, 'default');
      expect(second.added).toEqual([]);
      const after = await c.connection.operatorService.listSearchAttributes({ namespace: 'default' });
      expect(Object.keys(after.customAttributes)).toEqual(expect.arrayContaining(SEARCH_ATTRIBUTE_NAMES));
    } finally {
      await c.connection.close();
    }
  } finally {
    await dev.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
