// Who a protection server is: a stable id recorded in its repository (server.json), and a check
// that no other repository's server already polls the task queue that id stands for.
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { livePollers, repositoryOfPoller } from '../temporal/pollers';
import { checkServerId, serverTaskQueue } from '../temporal/task-queues';
import { writeFileDurable } from '../repository/durable';

export interface ServerIdentity {
  id: string;
  taskQueue: string;
  /** The repository's own id: what tells two servers with the same id apart. */
  repositoryId: string;
  /** What this server's pollers call themselves in Temporal (`<id>/<repositoryId>@<host>/<pid>`). */
  workerIdentity: string;
}

/** Raised when the server must not start; its message is the one line the operator sees. */
export class ServerIdConflict extends Error {
  override name = 'ServerIdConflict';
}

/**
 * The id: as recorded in the repository; else the one asked for, else one derived from the
 * repository's id. Asking for another id than the recorded one is refused (it would orphan the
 * data sources the repository holds for the old id).
 */
export async function resolveServerIdentity(repositoryRoot: string, repositoryId: string, requested?: string): Promise<ServerIdentity> {
  const file = path.join(repositoryRoot, 'server.json');
  let recorded: string | undefined;
  try {
    recorded = (JSON.parse(await fs.readFile(file, 'utf8')) as { id?: string }).id;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (requested !== undefined) checkServerId(requested);
  if (recorded && requested && recorded !== requested) {
    throw new ServerIdConflict(`repository ${repositoryRoot} belongs to protection server ${recorded}, not ${requested}: start it with --id ${recorded} (or give --id ${requested} its own --state-dir)`);
  }
  const id = checkServerId(recorded ?? requested ?? `dpm-${repositoryId.slice(0, 8)}`);
  if (!recorded) await writeFileDurable(file, `${JSON.stringify({ id, recordedAt: new Date().toISOString() }, null, 2)}\n`);
  return { id, taskQueue: serverTaskQueue(id), repositoryId, workerIdentity: `${id}/${repositoryId}@${os.hostname()}/${process.pid}` };
}

/** Refuses to start when a server of another repository polls our queue. */
export async function refuseSharedQueue(client: Client, namespace: string, me: ServerIdentity): Promise<void> {
  const other = (await livePollers(client, namespace, me.taskQueue)).find((p) => repositoryOfPoller(p.identity) !== me.repositoryId);
  if (other) {
    throw new ServerIdConflict(
      `task queue ${me.taskQueue} is already polled by ${other.identity} (another repository): two servers with one id would mix their chains; give this one another --id`,
    );
  }
}
