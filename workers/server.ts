// `hvprotect server`: the protection server process. Runs every workflow and the server-side
// activities on task queue hvprotect-server. (The repository and storage API join it here.)
import type { Connection } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import type { Logger } from '../log/logger';
import { connectClient, connectWorker, loadTemporalSettings, type TemporalSettings } from '../temporal/connection';
import { SERVER_TASK_QUEUE } from '../temporal/task-queues';
import { registerSearchAttributes } from '../temporal/search-attributes';
import { installRuntime } from './runtime';
import * as selfCheckActivities from '../activities/server/self-check';

export interface ServerOptions {
  logger: Logger;
  temporal?: TemporalSettings;
  taskQueue?: string;
  /** Register our search attributes before polling (needs operator rights; default true). */
  registerSearchAttributes?: boolean;
}

export interface RunningServer {
  taskQueue: string;
  /** Resolves when the worker has stopped (after shutdown() or a fatal error). */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export function workflowsPath(): string {
  return require.resolve('../workflows');
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { logger } = opts;
  installRuntime({ logger });
  const temporal = opts.temporal ?? loadTemporalSettings();
  const taskQueue = opts.taskQueue ?? SERVER_TASK_QUEUE;
  if (opts.registerSearchAttributes !== false) {
    const client = await connectClient(temporal);
    try {
      const { added } = await registerSearchAttributes(client.connection as Connection, temporal.namespace);
      if (added.length) logger.info({ added }, 'registered search attributes');
    } finally {
      await client.connection.close();
    }
  }
  const connection = await connectWorker(temporal);
  const worker = await Worker.create({
    connection,
    namespace: temporal.namespace,
    taskQueue,
    workflowsPath: workflowsPath(),
    activities: { ...selfCheckActivities },
    shutdownGraceTime: '30 seconds',
  });
  logger.info({ address: temporal.address, namespace: temporal.namespace, taskQueue }, 'protection server polling');
  const done = worker.run().finally(() => connection.close());
  return {
    taskQueue,
    done,
    shutdown: async () => {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await done;
    },
  };
}
