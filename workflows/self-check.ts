// hvprotect doctor: proves the whole chain a backup needs — Temporal reachable, a protection
// server polling its task queue, our search attributes accepted — without touching a VM.
import { proxyActivities, upsertSearchAttributes, workflowInfo, log } from '@temporalio/workflow';
import type * as serverActivities from '../activities/server/self-check';
import { SA } from '../temporal/search-attribute-keys';

const { describeProtectionServer } = proxyActivities<typeof serverActivities>({
  startToCloseTimeout: '30 seconds',
  retry: { maximumAttempts: 3 },
});

export interface SelfCheckResult {
  server: Awaited<ReturnType<typeof serverActivities.describeProtectionServer>>;
  workflowId: string;
}

export async function selfCheck(): Promise<SelfCheckResult> {
  const server = await describeProtectionServer();
  upsertSearchAttributes([
    { key: SA.host, value: server.hostname },
    { key: SA.kind, value: 'self-check' },
  ]);
  log.info('self-check passed', { serverHost: server.hostname });
  return { server, workflowId: workflowInfo().workflowId };
}
