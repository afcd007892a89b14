// recoveryPoints: the recovery points a server keeps of a data source. Run on that server's queue
// (`rp list` asks every server that has kept a chain of it), so no admin token is needed to list.
import { proxyActivities } from '@temporalio/workflow';
import type { RecoveryPointSummary, RestoreServerActivities } from '../activities/server/restore';

const server = proxyActivities<RestoreServerActivities>({ startToCloseTimeout: '1 minute', retry: { maximumAttempts: 3 } });

export async function recoveryPoints(input: { dataSource: string }): Promise<RecoveryPointSummary[]> {
  return server.listRecoveryPoints(input);
}
