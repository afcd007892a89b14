// `hvprotect dev` (what `npm start` runs): the embedded default on one machine.
// Temporal dev server with its Web UI and a SQLite file, a protection server with its repository
// and storage API, a lab cluster (two nodes, a stand-alone host, a file server) with sample VMs whose
// disks hold real guest file systems (hypervisor/lab/guest-images.ts) and a guest write load, an
// agent per lab host, every VM protected on a schedule, and a first backup of each. Everything lives under the state folder; a second start resumes from it.
import path from 'node:path';
import fs from 'node:fs';
import type { Client } from '@temporalio/client';
import type { Logger } from '../log/logger';
import { DevServerError, startDevServer, type DevServer } from '../temporal/dev-server';
import { loadTemporalSettings, withPayloadKeyFile } from '../temporal/connection';
import { PayloadKeyring } from '../temporal/payload-codec';
import { startCodecServer, type CodecServer } from '../temporal/codec-server';
import { startServer, type RunningServer } from '../workers/server';
import { installRuntime } from '../workers/runtime';
import { startAgent, type RunningAgent } from '../workers/agent';
import { Lab, LabHypervisor, type WriteLoadProcess } from '../hypervisor/lab';
import { SAMPLE_FILE_SYSTEMS_MIN_DISK, createSampleLab } from '../hypervisor/lab/sample';
import { dataSourceIdFor, listProtections, protectVm, startBackupNow, type ProtectionInfo } from './protection';

export interface DevOptions {
  stateDir: string;
  temporalPort: number;
  uiPort: number;
  apiPort: number;
  metricsPort?: number;
  sdkMetricsPort?: number;
  headless: boolean;
  logger: Logger;
  /** Sample lab disk size (default 128 MiB). */
  diskSize?: number;
  /** Skip the lab, the agents and the protections (just Temporal and the server). */
  bare?: boolean;
  /** Do not start the first backups. */
  noFirstBackups?: boolean;
  /** Protection servers to run (dpm01, dpm02, …; default 1); the sample VMs are split between them. */
  servers?: number;
  /** Payload key file (default <stateDir>/payload.keys, created on first start). */
  payloadKeyFile?: string;
  /** The codec server's port, for the Web UI (default UI port + 1; 0 = any free port). */
  codecPort?: number;
}

export interface DevStack {
  temporal: DevServer;
  /** The key file sealing payloads, and the codec server the Web UI opens them with. */
  payloadKeyFile: string;
  codecServer: CodecServer;
  /** The first server (dpm01). */
  server: RunningServer;
  servers: RunningServer[];
  agents: RunningAgent[];
  lab?: Lab;
  protections: ProtectionInfo[];
  firstBackups: string[];
  stop(): Promise<void>;
}

export async function startDevStack(opts: DevOptions): Promise<DevStack> {
  const { logger } = opts;
  const stateDir = path.resolve(opts.stateDir);
  fs.mkdirSync(stateDir, { recursive: true });
  // One process-wide Temporal runtime for server and agents; its Prometheus exporter on the next port.
  const sdkMetrics = opts.metricsPort ? `127.0.0.1:${opts.sdkMetricsPort ?? opts.metricsPort + 1}` : undefined;
  installRuntime({ logger, prometheusBindAddress: sdkMetrics });
  // The default runs encrypted: a payload key made on first start, kept with the state.
  const payloadKeyFile = path.resolve(opts.payloadKeyFile ?? path.join(stateDir, 'payload.keys'));
  if (!fs.existsSync(payloadKeyFile)) {
    PayloadKeyring.create(payloadKeyFile);
    logger.info({ payloadKeyFile }, 'created a payload key');
  }
  const settings = withPayloadKeyFile(loadTemporalSettings({ TEMPORAL_ADDRESS: `127.0.0.1:${opts.temporalPort}`, TEMPORAL_NAMESPACE: 'default' }), payloadKeyFile);
  const uiOrigins = [`http://127.0.0.1:${opts.uiPort}`, `http://localhost:${opts.uiPort}`];
  const codecPort = opts.codecPort ?? opts.uiPort + 1;
  const codecServer = await startCodecServer({ codec: settings.payloadCodec!, port: codecPort, allowedOrigins: uiOrigins, log: (msg, fields) => logger.warn(fields ?? {}, msg) }).catch((err: NodeJS.ErrnoException) => {
    throw err.code === 'EADDRINUSE' ? new DevServerError(`port ${codecPort} (the codec server for the Web UI) is already in use: choose another with --codec-port`) : err;
  });
  logger.info({ stateDir }, 'starting the Temporal dev server');
  let temporal: DevServer;
  try {
    temporal = await startDevServer({
      dbFile: path.join(stateDir, 'temporal.sqlite'),
      port: opts.temporalPort,
      uiPort: opts.uiPort,
      headless: opts.headless,
      logFile: path.join(stateDir, 'temporal-server.log'),
      uiCodecEndpoint: codecServer.url,
    });
  } catch (err) {
    await codecServer.close();
    throw err;
  }
  const agents: RunningAgent[] = [];
  const servers: RunningServer[] = [];
  let load: WriteLoadProcess | undefined;
  const stop = async () => {
    await load?.stop().catch(() => undefined);
    for (const a of agents) await a.shutdown().catch((err) => logger.warn({ err }, 'agent shutdown'));
    for (const sv of servers) await sv.shutdown().catch((err) => logger.warn({ err }, 'server shutdown'));
    await temporal.stop();
    await codecServer.close();
  };
  try {
    // dpm01 keeps the folder a one-server start always used; dpm02… get folders of their own.
    for (let i = 1; i <= (opts.servers ?? 1); i++) {
      const id = `dpm${String(i).padStart(2, '0')}`;
      servers.push(
        await startServer({ id, logger: logger.child({ process: 'server', server: id }), temporal: settings, stateDir: path.join(stateDir, i === 1 ? 'server' : `server-${id}`),
          apiPort: opts.apiPort && opts.apiPort + i - 1, metricsPort: i === 1 ? opts.metricsPort : undefined, sdkMetricsUrl: i === 1 && sdkMetrics ? `http://${sdkMetrics}/metrics` : undefined,
          webUiUrl: temporal.uiUrl }),
      );
    }
    const server = servers[0];
    if (opts.bare) return { temporal, payloadKeyFile, codecServer, server, servers, agents, protections: [], firstBackups: [], stop };

    const lab = await Lab.open(path.join(stateDir, 'lab'));
    const fileSystems = (opts.diskSize ?? SAMPLE_FILE_SYSTEMS_MIN_DISK) >= SAMPLE_FILE_SYSTEMS_MIN_DISK;
    if (!fileSystems) logger.warn({ diskSize: opts.diskSize }, `sample disks under ${SAMPLE_FILE_SYSTEMS_MIN_DISK / 1024 / 1024} MiB hold synthetic bytes, no guest file systems`);
    const sample = await createSampleLab(lab, { diskSize: opts.diskSize, fileSystems });
    const hosts = [...sample.nodes, sample.standalone, sample.fileServer];
    for (const host of hosts) {
      // In-process agents get a fresh token from every server each start (only its hash is kept); the last start's agents are gone.
      const credentials = [];
      for (const sv of servers) {
        if (sv.tokens.isLive(host)) await sv.tokens.revoke(host);
        credentials.push({ id: sv.id, token: await sv.tokens.issue(host, 'agent') });
      }
      agents.push(await startAgent({ logger: logger.child({ process: 'agent', host }), adapter: await LabHypervisor.open(lab, host), servers: credentials, temporal: settings }));
    }
    // A guest that keeps writing while it is backed up.
    load = await lab.startWriteLoad({ vm: sample.vms.web01.vmId, seed: 2026, intervalMs: 200, batch: 1 }).catch((err) => {
      logger.warn({ err: (err as Error).message }, 'guest write load did not start');
      return undefined;
    });

    const client: Client = server.client;
    const protectedAlready = new Set((await listProtections(client)).map((p) => p.dataSource));
    const firstBackups: string[] = [];
    for (const [label, facts] of Object.entries(sample.vms)) {
      const dataSource = dataSourceIdFor(label);
      if (protectedAlready.has(dataSource)) continue;
      // Without --server, each goes to the server owning fewest: the VMs split between servers.
      const p = await protectVm(client, {
        vm: { vmId: facts.vmId, name: facts.name, host: facts.host, state: facts.state },
        dataSource,
        schedule: { at: ['02:00', '14:00'] },
        role: facts.replica.role === 'replica' ? 'replica' : undefined,
      });
      if (!opts.noFirstBackups) firstBackups.push((await startBackupNow(client, p)).workflowId);
    }
    return { temporal, payloadKeyFile, codecServer, server, servers, agents, lab, protections: await listProtections(client), firstBackups, stop };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
