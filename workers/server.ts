// `hvprotect server`: the protection server process. Owns the repository, serves the storage API
// to host agents, and runs the workflows of the data sources it owns plus the server-side
// activities on its own task queue, hvprotect-server-<id>.
import fs from 'node:fs';
import path from 'node:path';
import type { Client, Connection } from '@temporalio/client';
import { Runtime, Worker } from '@temporalio/worker';
import type { Logger } from '../log/logger';
import { connectClient, connectWorker, dataConverterOf, loadTemporalSettings, workflowInterceptorModules, type TemporalSettings } from '../temporal/connection';
import os from 'node:os';
import { refuseSharedQueue, resolveServerIdentity, type ServerIdentity } from './server-identity';
import { protectionServer, serverStartedSignal, serverWorkflowId, type ServerRecord } from '../workflows/protection-server';
import { registerSearchAttributes } from '../temporal/search-attributes';
import { buildIdOf, checkBuildId, openPinnedRuns, serverDeploymentName, setCurrentBuild, waitForVersion } from '../temporal/versioning';
import { projectRoot } from '../temporal/project-root';
import { startSessionKeeper, type SessionKeeper } from './session-keeper';
import { installRuntime } from './runtime';
import { bundleWorkflowsApart } from './workflow-bundle';
import { ProtectionMetrics, startMetricsServer } from '../metrics/metrics';
import { startProtectionStates } from '../metrics/protection-states';
import { protectionPageSource } from '../protection/page-source';
import { startStorageAlerts } from '../protection/storage-alerts';
import * as selfCheckActivities from '../activities/server/self-check';
import { createServerActivities } from '../activities/server/backup';
import { createRestoreServerActivities } from '../activities/server/restore';
import { createAlertActivities, type AlertWebhook } from '../activities/server/alerts';
import { createGroupActivities } from '../activities/server/groups';
import { Repository } from '../repository';
import type { EncryptionKey } from '../repository';
import type { StorageServerTls } from '../storage-api/tls';
import { GrantAuthority } from '../storage-api/grants';
import { TokenStore } from '../storage-api/tokens';
import { startStorageApi, type StorageApi } from '../storage-api/server';

export interface ServerOptions {
  logger: Logger;
  temporal?: TemporalSettings;
  /** The server's id (default: as recorded in its repository, else derived from the repository's id). */
  id?: string;
  /** Folder for the repository, tokens and leases (default .hvprotect/server). */
  stateDir?: string;
  /** Repository folder (default <stateDir>/repository). */
  repositoryDir?: string;
  apiHost?: string;
  /** Storage API port; 0 = any free port (default 8780). */
  apiPort?: number;
  /** Serve the storage API over TLS (mutual TLS with a client CA). */
  apiTls?: StorageServerTls;
  /** Seal chunks with this key (AES-256-GCM); an encrypted repository needs it to open. */
  encryptionKey?: EncryptionKey;
  /** Register our search attributes before polling (needs operator rights; default true). */
  registerSearchAttributes?: boolean;
  maxConcurrentWorkflowTasks?: number;
  /** Port of /metrics (ours + the SDK's); undefined = no metrics endpoint, 0 = any free port. */
  metricsPort?: number;
  /** Largest disk (virtual size, bytes) an agent may send an index for (default 64 TiB). */
  maxDiskSize?: number;
  /** Recovery points a data source may gain in any hour (default 12). */
  maxPointsPerHour?: number;
  /** Listen address of /metrics (default 127.0.0.1). */
  metricsHost?: string;
  /** When set, /metrics answers only `Authorization: Bearer <metricsToken>`. */
  metricsToken?: string;
  /** Where the SDK runtime's Prometheus exporter listens (set when the runtime was installed with it). */
  sdkMetricsUrl?: string;
  /** Backup session TTL without a call or a keeper renewal (default 6 h; tests shorten it). */
  sessionTtlMs?: number;
  /** How often the session keeper checks sessions against their workflow runs (default 5 min). */
  sessionKeepIntervalMs?: number;
  /**
   * The build id of this server's workflow code in its worker deployment (default: the package
   * version and a digest of the workflow bundle, temporal/versioning.ts). Packagers may set their
   * own; tests set one to stand for a release.
   */
  buildId?: string;
  /** The Temporal Web UI, for the protection page's links to jobs (default $HVPROTECT_WEB_UI). */
  webUiUrl?: string;
  /** How often the status gauges re-read the protections' states (default 30 s). */
  protectionStatesIntervalMs?: number;
  /** Where changes of protection status are posted (JSON, HMAC-signed; activities/server/alerts.ts). */
  alertWebhook?: AlertWebhook;
}

export interface RunningServer {
  /** Keeps backup sessions alive while their workflow runs; aborts those of ended runs. */
  sessionKeeper: SessionKeeper;
  id: string;
  taskQueue: string;
  identity: ServerIdentity;
  stateDir: string;
  repository: Repository;
  tokens: TokenStore;
  storageApi: StorageApi;
  /** The admin token (also in <stateDir>/admin.token, mode 0600). */
  adminToken: string;
  client: Client;
  metricsUrl?: string;
  /** This server's build in its worker deployment (hvprotect-server-<id>). */
  buildId: string;
  /** Resolves when the worker has stopped (after shutdown() or a fatal error). */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

function packageVersion(): string {
  return JSON.parse(fs.readFileSync(path.join(projectRoot(), 'package.json'), 'utf8')).version as string;
}

export function workflowsPath(): string {
  return require.resolve('../workflows');
}

/** The admin token: created once, kept in a 0600 file next to the token store. */
async function ensureAdminToken(tokens: TokenStore, stateDir: string): Promise<string> {
  const file = path.join(stateDir, 'admin.token');
  if (fs.existsSync(file)) {
    const token = fs.readFileSync(file, 'utf8').trim();
    if (tokens.authenticate(token)?.role === 'admin') return token;
  }
  // The file was its only holder: the token it held (if any) ends here.
  if (tokens.isLive('admin')) await tokens.revoke('admin');
  const token = await tokens.issue('admin', 'admin');
  fs.writeFileSync(`${file}.tmp`, `${token}\n`, { mode: 0o600 });
  fs.renameSync(`${file}.tmp`, file);
  return token;
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { logger } = opts;
  installRuntime({ logger });
  const temporal = opts.temporal ?? loadTemporalSettings();
  const stateDir = path.resolve(opts.stateDir ?? '.hvprotect/server');
  fs.mkdirSync(stateDir, { recursive: true });

  const client = await connectClient(temporal);
  if (opts.registerSearchAttributes !== false) {
    const { added } = await registerSearchAttributes(client.connection as Connection, temporal.namespace);
    if (added.length) logger.info({ added }, 'registered search attributes');
  }
  const repository = await Repository.open(opts.repositoryDir ?? path.join(stateDir, 'repository'), {
    create: true,
    logger: logger.child({ component: 'repository' }),
    encryptionKey: opts.encryptionKey,
    maxVirtualSize: opts.maxDiskSize,
    sessionTtlMs: opts.sessionTtlMs,
  });
  let identity: ServerIdentity;
  try {
    identity = await resolveServerIdentity(repository.root, repository.config.id, opts.id);
    await refuseSharedQueue(client, temporal.namespace, identity);
  } catch (err) {
    await repository.close().catch(() => undefined);
    await client.connection.close().catch(() => undefined);
    throw err;
  }
  const { taskQueue } = identity;
  const tokens = await TokenStore.open(path.join(stateDir, 'tokens.json'));
  const adminToken = await ensureAdminToken(tokens, stateDir);
  // The key this server signs its jobs' grants with (storage-api/grants.ts), 0600 beside the tokens.
  const grants = await GrantAuthority.open(path.join(stateDir, 'grant.key'));
  const storageApi = await startStorageApi({
    repository,
    tokens,
    grants,
    host: opts.apiHost ?? '127.0.0.1',
    port: opts.apiPort ?? 8780,
    logger: logger.child({ component: 'storage-api' }),
    tls: opts.apiTls,
    protectionPage: protectionPageSource({ client, repository, serverId: identity.id, webUi: opts.webUiUrl ?? process.env.HVPROTECT_WEB_UI }),
  });
  fs.writeFileSync(path.join(stateDir, 'storage-api.url'), `${storageApi.url}\n`);

  const metrics = new ProtectionMetrics();
  const metricsServer = opts.metricsPort === undefined ? undefined : await startMetricsServer({ metrics, host: opts.metricsHost, port: opts.metricsPort, sdkMetricsUrl: opts.sdkMetricsUrl, token: opts.metricsToken });

  const self = { id: identity.id, storageUrl: storageApi.url };
  const connection = await connectWorker(temporal);
  // The bundle is made here, not by Worker.create, because its digest is the build id; on a
  // thread of its own, so that webpack's leftovers do not stay in this process (workflow-bundle.ts).
  const workflowBundle = await bundleWorkflowsApart({ workflowsPath: workflowsPath(), workflowInterceptorModules: workflowInterceptorModules(temporal), logger: Runtime.instance().logger });
  const buildId = checkBuildId(opts.buildId ?? buildIdOf(packageVersion(), workflowBundle.code));
  const worker = await Worker.create({
    connection,
    namespace: temporal.namespace,
    taskQueue,
    identity: identity.workerIdentity,
    workflowBundle,
    dataConverter: dataConverterOf(temporal),
    // Jobs are pinned to the build that started them; long-lived workflows say AUTO_UPGRADE
    // themselves (temporal/versioning.ts).
    workerDeploymentOptions: { useWorkerVersioning: true, version: { deploymentName: serverDeploymentName(identity.id), buildId }, defaultVersioningBehavior: 'PINNED' },
    activities: {
      ...selfCheckActivities,
      ...createServerActivities({ repository, tokens, grants, self, metrics, maxPointsPerHour: opts.maxPointsPerHour }),
      ...createRestoreServerActivities({ repository, grants, self }),
      ...createGroupActivities({ client, repository, taskQueue }),
      ...createAlertActivities({ webhook: opts.alertWebhook, onAlert: (a) => metrics.alerts.inc({ datasource: a.dataSource, to: a.to }) }),
    },
    maxConcurrentWorkflowTaskExecutions: opts.maxConcurrentWorkflowTasks,
    shutdownGraceTime: '30 seconds',
  });
  const running = worker.run();
  // A server that starts makes its build the one new work goes to (ending a drain, or an upgrade);
  // jobs pinned to other builds stay with them (temporal/versioning.ts).
  let previousBuild: string;
  try {
    await waitForVersion(client, temporal.namespace, identity.id, buildId);
    previousBuild = await setCurrentBuild(client, temporal.namespace, identity.id, buildId, identity.workerIdentity);
  } catch (err) {
    worker.shutdown();
    await running.catch(() => undefined);
    await Promise.all([storageApi.close(), metricsServer?.close(), repository.close(), connection.close(), client.connection.close()].map((p) => p?.catch(() => undefined)));
    throw err;
  }
  if (previousBuild !== buildId) logger.info({ buildId, previousBuild: previousBuild || 'none (drained or first start)' }, 'this build is current: new jobs run on it');
  const waiting = (await openPinnedRuns(client, identity.id).catch(() => [])).filter((r) => r.buildId !== buildId);
  if (waiting.length) {
    const builds = [...new Set(waiting.map((r) => r.buildId))];
    logger.warn(
      { builds, runs: waiting.map((r) => r.workflowId) },
      `${waiting.length} job(s) started by build ${builds.join(', ')} wait for that build: start it to let them finish, ` +
        `or continue them on this one with \`hvprotect upgrade adopt --server ${identity.id} --from BUILD\` (README: Upgrading)`,
    );
  }
  // The server's record in Temporal (`server/<id>`): what doctor and the CLI read.
  const record: ServerRecord = {
    id: identity.id,
    taskQueue,
    repositoryId: identity.repositoryId,
    repository: repository.root,
    storageUrl: storageApi.url,
    machine: os.hostname(),
    pid: process.pid,
    startedAt: new Date().toISOString(),
    buildId,
    timeZone: Intl.DateTimeFormat().resolvedOptions().timeZone,
  };
  await client.workflow.signalWithStart(protectionServer, {
    workflowId: serverWorkflowId(identity.id),
    taskQueue,
    args: [record],
    signal: serverStartedSignal,
    signalArgs: [record],
    staticSummary: `protection server ${identity.id}`,
  });
  fs.writeFileSync(path.join(stateDir, 'server.id'), `${identity.id}\n`);
  logger.info(
    { id: identity.id, address: temporal.address, namespace: temporal.namespace, taskQueue, storageApi: storageApi.url, repository: repository.root },
    'protection server running',
  );
  // The status gauges' states (metrics/protection-states.ts), when there is a /metrics to show them.
  const protectionStates = metricsServer ? startProtectionStates({ client, serverId: identity.id, metrics, logger: logger.child({ component: 'protection-states' }), intervalMs: opts.protectionStatesIntervalMs }) : undefined;
  const storageAlerts = startStorageAlerts({ repository, serverId: identity.id, stateFile: path.join(stateDir, 'storage-alerts.json'), webhook: opts.alertWebhook, logger: logger.child({ component: 'storage-alerts' }), intervalMs: opts.protectionStatesIntervalMs });
  // Sessions live as long as their backup runs (checked against Temporal), not a fixed TTL.
  const sessionKeeper = startSessionKeeper({ repository, client, logger: logger.child({ component: 'session-keeper' }), intervalMs: opts.sessionKeepIntervalMs });
  const done = running.finally(async () => {
    protectionStates?.stop();
    storageAlerts.stop();
    await sessionKeeper.stop().catch(() => undefined);
    await storageApi.close().catch(() => undefined);
    await metricsServer?.close().catch(() => undefined);
    await repository.close().catch(() => undefined);
    await connection.close().catch(() => undefined);
    await client.connection.close().catch(() => undefined);
  });
  return {
    sessionKeeper,
    id: identity.id,
    taskQueue,
    identity,
    buildId,
    stateDir,
    repository,
    tokens,
    storageApi,
    adminToken,
    client,
    metricsUrl: metricsServer?.url,
    done,
    shutdown: async () => {
      // A server that stops ends its record, so no one takes it for running (its pollers linger a minute).
      await client.workflow.getHandle(serverWorkflowId(identity.id)).terminate('protection server stopped').catch(() => undefined);
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await done;
    },
  };
}
