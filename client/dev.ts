// `hvprotect dev` (what `npm start` runs): the embedded default on one machine.
// Temporal dev server with its Web UI and a SQLite file under the state folder, then the
// protection server. A second start resumes from the same state.
import path from 'node:path';
import fs from 'node:fs';
import type { Logger } from '../log/logger';
import { startDevServer, type DevServer } from '../temporal/dev-server';
import { loadTemporalSettings } from '../temporal/connection';
import { startServer, type RunningServer } from '../workers/server';

export interface DevOptions {
  stateDir: string;
  temporalPort: number;
  uiPort: number;
  headless: boolean;
  logger: Logger;
}

export interface DevStack {
  temporal: DevServer;
  server: RunningServer;
  stop(): Promise<void>;
}

export async function startDevStack(opts: DevOptions): Promise<DevStack> {
  const { logger } = opts;
  const stateDir = path.resolve(opts.stateDir);
  fs.mkdirSync(stateDir, { recursive: true });
  logger.info({ stateDir }, 'starting the Temporal dev server');
  const temporal = await startDevServer({
    dbFile: path.join(stateDir, 'temporal.sqlite'),
    port: opts.temporalPort,
    uiPort: opts.uiPort,
    headless: opts.headless,
    logFile: path.join(stateDir, 'temporal-server.log'),
  });
  const settings = loadTemporalSettings({ TEMPORAL_ADDRESS: temporal.address, TEMPORAL_NAMESPACE: temporal.namespace });
  let server: RunningServer;
  try {
    server = await startServer({ logger: logger.child({ process: 'server' }), temporal: settings, stateDir: path.join(stateDir, 'server') });
  } catch (err) {
    await temporal.stop();
    throw err;
  }
  return {
    temporal,
    server,
    stop: async () => {
      await server.shutdown().catch((err) => logger.warn({ err }, 'server shutdown'));
      await temporal.stop();
    },
  };
}
