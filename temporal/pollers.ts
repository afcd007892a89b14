// Who polls a task queue now: servers and agents name themselves in their worker identity, so a
// queue's pollers say which repository's server and which agents are there.
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';

/** A long poll lasts up to a minute: a poller seen within this long is taken as alive. */
const LIVE_POLLER_MS = 75_000;

export interface QueuePoller {
  identity: string;
  lastAccess: Date;
}

/** Pollers of a task queue (workflow and activity) seen within the last long poll. */
export async function livePollers(client: Client, namespace: string, taskQueue: string): Promise<QueuePoller[]> {
  const out: QueuePoller[] = [];
  for (const taskQueueType of [temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY]) {
    const r = await client.workflowService.describeTaskQueue({ namespace, taskQueue: { name: taskQueue }, taskQueueType });
    for (const p of r.pollers ?? []) {
      const secs = Number(p.lastAccessTime?.seconds ?? 0);
      const lastAccess = new Date(secs * 1000);
      if (Date.now() - lastAccess.getTime() <= LIVE_POLLER_MS && p.identity) out.push({ identity: p.identity, lastAccess });
    }
  }
  return out;
}

/** The repository id a server's poller identity names (undefined for pollers that are not servers). */
export function repositoryOfPoller(identity: string): string | undefined {
  return /^[a-z0-9-]+\/([0-9a-f]+)@/.exec(identity)?.[1];
}
