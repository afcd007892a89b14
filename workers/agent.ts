// `hvprotect agent --host NAME`: the protection agent on one Hyper-V host (or SMB file server).
// Host activities on hvprotect-host-NAME, reading disks through the hypervisor adapter and
// pushing chunks to the storage API of the protection server that asks: every server it holds a
// credential for, and no other. A killed agent's activities time out
// on their heartbeat and Temporal retries them here when it returns (or wherever the VM went).
import os from 'node:os';
import { ApplicationFailure } from '@temporalio/activity';
import { Worker } from '@temporalio/worker';
import type { Client, Connection } from '@temporalio/client';
import type { Logger } from '../log/logger';
import type { HypervisorAdapter } from '../hypervisor/types';
import { connectClient, connectWorker, dataConverterOf, loadTemporalSettings, type TemporalSettings } from '../temporal/connection';
import { hostTaskQueue, hostTransferQueue } from '../temporal/task-queues';
import { StorageClient } from '../storage-api/client';
import type { StorageClientTls } from '../storage-api/tls';
import { createHostActivities } from '../activities/host';
import { createRestoreHostActivities } from '../activities/host/restore';
import { configuredRestoreRoots } from '../activities/host/restore-target';
import { HostFailure } from '../activities/failures';
import type { ServerEndpoint } from '../activities/host/types';
import { installRuntime } from './runtime';

/** What the agent holds for one protection server it serves. */
export interface AgentServerCredential {
  id: string;
  token: string;
  /** Where its storage API is, when the agent is told (else the address the server gives in each request). */
  storageUrl?: string;
}

export interface AgentOptions {
  logger: Logger;
  adapter: HypervisorAdapter;
  /** The protection servers this agent serves; a request from any other is refused. */
  servers: AgentServerCredential[];
  /** CA bundle and client certificate for https:// storage APIs. */
  storageTls?: StorageClientTls;
  temporal?: TemporalSettings;
  /** Backup transfers at once on this host (DPM's default is 3 per host). */
  maxConcurrentTransfers?: number;
  batchSlots?: number;
  throttleBytesPerSecond?: number;
  /** How often a transfer's progress (its heartbeat) reaches Temporal, ms (default 5000). */
  progressIntervalMs?: number;
  /** Folders restores may write under (`--restore-root`); default configuredRestoreRoots(). */
  restoreRoots?: string[];
}

export interface RunningAgent {
  host: string;
  taskQueue: string;
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export async function startAgent(opts: AgentOptions): Promise<RunningAgent> {
  const { logger, adapter } = opts;
  installRuntime({ logger });
  const temporal = opts.temporal ?? loadTemporalSettings();
  const taskQueue = hostTaskQueue(adapter.hostName);
  const storageFor = storageClients(adapter.hostName, opts.servers, opts.storageTls);
  const client: Client = await connectClient(temporal);
  const activities = createHostActivities({
    adapter,
    storageFor,
    batchSlots: opts.batchSlots,
    throttleBytesPerSecond: opts.throttleBytesPerSecond,
  });
  const connection = await connectWorker(temporal);
  // Two workers: the light steps (locate, inspect, checkpoint, release) never queue behind
  // disk transfers, and transfers have their own per-host limit.
  const { restoreDisks, ...restoreLight } = createRestoreHostActivities({ adapter, storageFor, restoreRoots: opts.restoreRoots ?? configuredRestoreRoots(undefined) });
  // Pollers name the servers served: `hvprotect doctor` reads them from the task queue.
  const identity = agentIdentity(adapter.hostName, opts.servers.map((s) => s.id));
  const { transferDisk, ...backupLight } = activities;
  const light = { ...backupLight, ...restoreLight };
  const worker = await Worker.create({
    connection,
    namespace: temporal.namespace,
    taskQueue,
    identity,
    dataConverter: dataConverterOf(temporal),
    activities: light,
    maxConcurrentActivityTaskExecutions: 20,
    shutdownGraceTime: '20 seconds',
  });
  const transferQueue = hostTransferQueue(adapter.hostName);
  const transferWorker = await Worker.create({
    connection,
    namespace: temporal.namespace,
    taskQueue: transferQueue,
    identity,
    dataConverter: dataConverterOf(temporal),
    activities: { transferDisk, restoreDisks },
    maxConcurrentActivityTaskExecutions: opts.maxConcurrentTransfers ?? 3,
    // Progress travels in heartbeats (no history events): send them often enough for a progress bar.
    maxHeartbeatThrottleInterval: opts.progressIntervalMs ?? 5000,
    shutdownGraceTime: '20 seconds',
  });
  logger.info({ host: adapter.hostName, taskQueue, transferQueue, servers: opts.servers.map((s) => s.id) }, 'protection agent polling');
  const done = Promise.all([worker.run(), transferWorker.run()]).then(() => undefined).finally(async () => {
    await connection.close().catch(() => undefined);
    await (client.connection as Connection).close().catch(() => undefined);
  });
  return {
    host: adapter.hostName,
    taskQueue,
    done,
    shutdown: async () => {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      if (transferWorker.getState() === 'RUNNING') transferWorker.shutdown();
      await done;
    },
  };
}

/** `agent/<host>[dpm01,dpm02]@<machine>/<pid>`: what the agent's pollers call themselves. */
export function agentIdentity(host: string, servers: string[]): string {
  return `agent/${host}[${servers.join(',')}]@${os.hostname()}/${process.pid}`;
}

/** The servers an agent poller identity names (undefined when it is not an agent's). */
export function serversOfAgent(identity: string): { host: string; servers: string[] } | undefined {
  const m = /^agent\/([^[]+)\[([^\]]*)\]@/.exec(identity);
  return m ? { host: m[1], servers: m[2] ? m[2].split(',') : [] } : undefined;
}

/** One storage client per server this agent trusts; a server it holds no credential for is refused. */
function storageClients(host: string, servers: AgentServerCredential[], tls?: StorageClientTls): (server: ServerEndpoint) => StorageClient {
  const clients = new Map<string, StorageClient>();
  return (server) => {
    const cred = servers.find((s) => s.id === server.id);
    if (!cred) {
      throw ApplicationFailure.nonRetryable(
        `the agent on ${host} holds no credential for protection server ${server.id} (it serves ${servers.map((s) => s.id).join(', ') || 'none'}): ` +
          `issue one with \`hvprotect token issue --host ${host}\` against ${server.id} and restart the agent with --server ${server.id}=TOKEN_FILE`,
        HostFailure.ServerNotTrusted,
      );
    }
    const url = cred.storageUrl ?? server.storageUrl;
    const key = `${server.id} ${url}`;
    if (!clients.has(key)) clients.set(key, new StorageClient(url, cred.token, tls));
    return clients.get(key)!;
  };
}
