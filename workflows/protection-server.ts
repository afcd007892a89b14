// protectionServer: one long-lived workflow per protection server (`server/<id>`), on its own
// queue: the record of what the server is (queue, repository, storage API) that the CLI and
// `doctor` read. A server (re)starting signals it with its current record; a query that gets no
// answer means the server is not running.
import { allHandlersFinished, condition, continueAsNew, defineQuery, defineSignal, setHandler, setWorkflowOptions, upsertMemo, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import { SA } from '../temporal/search-attribute-keys';

export interface ServerRecord {
  id: string;
  taskQueue: string;
  repositoryId: string;
  repository: string;
  storageUrl: string;
  /** Machine and process that run it now. */
  machine: string;
  pid: number;
  startedAt: string;
  /** The build it runs (temporal/versioning.ts); absent in records of builds before versioning. */
  buildId?: string;
  /** The IANA zone it runs in: schedules made without --tz use it. */
  timeZone?: string;
}

export const serverRecordQuery = defineQuery<ServerRecord>('record');
export const serverStartedSignal = defineSignal<[ServerRecord]>('serverStarted');

export function serverWorkflowId(id: string): string {
  return `server/${id}`;
}

export async function protectionServer(initial: ServerRecord): Promise<void> {
  let record = initial;
  const show = () => {
    upsertMemo({ ...record });
    upsertSearchAttributes([{ key: SA.server, value: record.id }]);
  };
  setHandler(serverRecordQuery, () => record);
  setHandler(serverStartedSignal, (r) => {
    record = r;
    show();
  });
  show();
  // Only restarts add events here; a fresh history once Temporal suggests it.
  await condition(() => workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > 1000);
  await condition(allHandlersFinished);
  await continueAsNew<typeof protectionServer>(record);
}

// Lives as long as the server: follows the server's current build (temporal/versioning.ts).
setWorkflowOptions({ versioningBehavior: 'AUTO_UPGRADE' }, protectionServer);
