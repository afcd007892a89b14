// findVms: which VMs the running agents see, for the CLI to resolve a name (and suggest close
// ones when it is wrong). Each host is asked at once; a host that does not answer is listed as such.
import { proxyActivities } from '@temporalio/workflow';
import type { ActivityOptions } from '@temporalio/workflow';
import type { HostActivities } from '../activities/host/types';
import type { ServerActivities } from '../activities/server/types';
import type { VmSummary } from '../hypervisor/types';
import { hostTaskQueue } from '../temporal/task-queues';

const server = proxyActivities<ServerActivities>({ startToCloseTimeout: '1 minute' });
const host = proxyActivities<HostActivities>({ startToCloseTimeout: '1 minute', retry: { maximumAttempts: 1 } });

export interface FindVmsResult {
  vms: VmSummary[];
  silentHosts: string[];
}

export async function findVms(opts: { locateTimeout?: string } = {}): Promise<FindVmsResult> {
  const hosts = await server.listHosts();
  const silentHosts: string[] = [];
  const lists = await Promise.all(
    hosts.map((h) =>
      host.listVms
        .executeWithOptions({ taskQueue: hostTaskQueue(h), scheduleToStartTimeout: opts.locateTimeout ?? '10 seconds', summary: `VMs on ${h}` } as ActivityOptions, [])
        .catch((): VmSummary[] => {
          silentHosts.push(h);
          return [];
        }),
    ),
  );
  return { vms: lists.flat(), silentHosts };
}
