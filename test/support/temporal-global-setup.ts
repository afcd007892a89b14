// One real Temporal dev server per test run (random ports, a temp SQLite file), for the
// `temporal` jest project only. Tests find it through TEMPORAL_ADDRESS like any client would.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, startDevServer, type DevServer } from '../../temporal/dev-server';

declare global {
  // eslint-disable-next-line no-var
  var __HVP_TEMPORAL__: { server: DevServer; dir: string } | undefined;
}

export const TEST_NAMESPACES = Array.from({ length: 8 }, (_, i) => `hvp-test-${i + 1}`);

export default async function globalSetup(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-test-temporal-'));
  const port = await freePort();
  const server = await startDevServer({
    dbFile: path.join(dir, 'temporal.sqlite'),
    port,
    uiPort: await freePort(),
    readyTimeoutMs: 120_000,
    // One namespace per jest worker: parallel test files never share task queues.
    extraNamespaces: TEST_NAMESPACES,
  });
  globalThis.__HVP_TEMPORAL__ = { server, dir };
  process.env.TEMPORAL_ADDRESS = server.address;
  process.env.TEMPORAL_NAMESPACE = server.namespace;
  process.env.HVP_TEST_TEMPORAL_UI = server.uiUrl ?? '';
  process.env.HVP_TEST_TEMPORAL_DB = server.dbFile;
}
