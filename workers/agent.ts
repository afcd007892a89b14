// `hvprotect agent --host NAME`: the protection agent on one Hyper-V host (or SMB file server).
// Host activities on hvprotect-host-NAME, reading disks through the hypervisor adapter and
// pushing chunks to the protection server's storage API. A killed agent's activities time out
// on their heartbeat and Temporal retries them here when it returns (or wherever the VM went).
import { Worker } from '@temporalio/worker';
import type { Client, Connection } from '@temporalio/client';
import type { Logger } from '../log/logger';
import type { HypervisorAdapter } from '../hypervisor/types';
import { connectClient, connectWorker, loadTemporalSettings, type TemporalSettings } from '../temporal/connection';
import { hostTaskQueue, hostTransferQueue } from '../temporal/task-queues';
import { StorageClient } from '../storage-api/client';
import type { StorageClientTls } from '../storage-api/tls';
import { createHostActivities } from '../activities/host';
import { createRestoreHostActivities } from '../activities/host/restore';
import { configuredRestoreRoots } from '../activities/host/restore-target';
import { transferProgressSignal } from '../workflows/backup-vm';
import { installRuntime } from './runtime';

export interface AgentOptions {
  logger: Logger;
  adapter: HypervisorAdapter;
  storageUrl: string;
  token: string;
  /** CA bundle and client certificate for an https:// storage API. */
  storageTls?: StorageClientTls;
  temporal?: TemporalSettings;
  /** Backup transfers at once on this host (DPM's default is 3 per host). */
  maxConcurrentTransfers?: number;
  batchSlots?: number;
  throttleBytesPerSecond?: number;
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
  const storage = new StorageClient(opts.storageUrl, opts.token, opts.storageTls);
  const client: Client = await connectClient(temporal);
  const activities = createHostActivities({
    adapter,
    storage,
    batchSlots: opts.batchSlots,
    throttleBytesPerSecond: opts.throttleBytesPerSecond,
    progressIntervalMs: opts.progressIntervalMs,
    signalProgress: (workflowId, p) => client.workflow.getHandle(workflowId).signal(transferProgressSignal, p),
  });
  const connection = await connectWorker(temporal);
  // Two workers: the light steps (locate, inspect, checkpoint, release) never queue behind
  // disk transfers, and transfers have their own per-host limit.
  const { restoreDisks, ...restoreLight } = createRestoreHostActivities({ adapter, storage, restoreRoots: opts.restoreRoots ?? configuredRestoreRoots(undefined) });
  const { transferDisk, ...backupLight } = activities;
  const light = { ...backupLight, ...restoreLight };
  const worker = await Worker.create({
    connection,
    namespace: temporal.namespace,
    taskQueue,
    activities: light,
    maxConcurrentActivityTaskExecutions: 20,
    shutdownGraceTime: '20 seconds',
  });
  const transferQueue = hostTransferQueue(adapter.hostName);
  const transferWorker = await Worker.create({
    connection,
    namespace: temporal.namespace,
    taskQueue: transferQueue,
    activities: { transferDisk, restoreDisks },
    maxConcurrentActivityTaskExecutions: opts.maxConcurrentTransfers ?? 3,
    shutdownGraceTime: '20 seconds',
  });
  logger.info({ host: adapter.hostName, taskQueue, transferQueue, storage: opts.storageUrl }, 'protection agent polling');
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
