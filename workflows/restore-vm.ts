// restoreVm: a recovery point back to where a person needs it.
//
//   lease   ← beginRestoreLease                 server: the point cannot be evicted while read
//   target  ← original owner | a named host     (original: the VM must be off, or gone)
//   files   ← restoreDisks                      host: every chunk checked against the index digests
//   vm      ← importRestoredVm                  host: registers the VM, off (not for --to DIR)
//   finally endRestoreLease
import {
  ApplicationFailure,
  CancellationScope,
  patched,
  proxyActivities,
  setCurrentDetails,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { ActivityOptions } from '@temporalio/workflow';
import type { HostActivities } from '../activities/host/types';
import type { RestoreHostActivities, RestoredDisk } from '../activities/host/restore';
import type { ServerActivities } from '../activities/server/types';
import type { RestoreServerActivities } from '../activities/server/restore';
import { SA } from '../temporal/search-attribute-keys';
import { hostTaskQueue, hostTransferQueue } from '../temporal/task-queues';
import { locateVmOwner } from './locate';

export type RestoreTarget =
  | { kind: 'original' }
  | { kind: 'host'; host: string; name?: string; newId?: boolean }
  | { kind: 'export'; host: string; dir: string; format: 'vhdx' | 'raw' };

export interface RestoreVmInput {
  dataSource: string;
  /** Default: the newest point. */
  pointId?: string;
  target: RestoreTarget;
  timing?: { locateTimeout?: string; heartbeatTimeout?: string };
}

export interface RestoreVmResult {
  dataSource: string;
  pointId: string;
  host: string;
  target: RestoreTarget['kind'];
  disks: RestoredDisk[];
  vmId?: string;
  vmName?: string;
}

// Server steps on this workflow's own queue: the server whose repository holds the point.
const server = proxyActivities<ServerActivities & RestoreServerActivities>({
  startToCloseTimeout: '5 minutes',
  retry: { maximumAttempts: 10, nonRetryableErrorTypes: ['UnknownRecoveryPoint', 'UnknownDataSource'] },
});

export async function restoreVm(input: RestoreVmInput): Promise<RestoreVmResult> {
  const { workflowId } = workflowInfo();
  const host = proxyActivities<HostActivities & RestoreHostActivities>({
    startToCloseTimeout: '10 minutes',
    scheduleToStartTimeout: '10 minutes',
    retry: { maximumAttempts: 5, nonRetryableErrorTypes: ['RecoveryPointDamaged', 'RestoreNotSupported', 'VmNotOnHost', 'VmNotFound'] },
  });
  const details = (s: string) => setCurrentDetails(`**${s}**\nrestore of ${input.dataSource}${input.pointId ? ` point ${input.pointId}` : ''} (${input.target.kind})`);
  upsertSearchAttributes([
    { key: SA.dataSource, value: input.dataSource },
    { key: SA.kind, value: 'restore' },
  ]);
  // An original-place restore replaces the VM's disks: only its protection may start one, so no
  // backup or check of the data source runs meanwhile.
  if (input.target.kind === 'original' && patched('original-restore-through-protection') && workflowInfo().parent?.workflowId !== `protection/${input.dataSource}`) {
    throw ApplicationFailure.nonRetryable(`an original-place restore of ${input.dataSource} goes through its protection: hvprotect restore VM --original`, 'InvalidInput');
  }

  details('leasing the recovery point');
  const lease = await server.beginRestoreLease({ dataSource: input.dataSource, pointId: input.pointId });
  try {
    const vmId = lease.vm.vmId ?? input.dataSource;
    upsertSearchAttributes([{ key: SA.vm, value: lease.vm.name ?? vmId }]);

    // Where the disks go.
    let targetHost: string;
    if (input.target.kind === 'original') {
      details('finding the original VM');
      const found = await locateVmOwner(host, server, {
        vm: vmId,
        locateTimeout: input.timing?.locateTimeout ?? '20 seconds',
        waitTimeoutMs: 0,
      }).catch(() => undefined);
      targetHost = found?.host ?? lease.vm.host ?? '';
      if (!targetHost) throw ApplicationFailure.nonRetryable(`the recovery point does not name the VM's host; restore with --host`, 'InvalidInput');
      const off = await host.checkVmOff.executeWithOptions({ taskQueue: hostTaskQueue(targetHost), summary: `is ${vmId} off on ${targetHost}?` } as ActivityOptions, [vmId]);
      if (off.exists && off.state !== 'off') {
        throw ApplicationFailure.nonRetryable(
          `VM ${lease.vm.name ?? vmId} is ${off.state} on ${targetHost}: turn it off before restoring to the original place, ` +
            'or restore to another host (--host) or folder (--to)',
          'VmNotOff',
        );
      }
    } else {
      targetHost = input.target.host;
    }
    upsertSearchAttributes([{ key: SA.host, value: targetHost }]);

    details(`restoring ${lease.disks.length} disk(s) on ${targetHost}`);
    const disks = await host.restoreDisks.executeWithOptions(
      {
        taskQueue: hostTransferQueue(targetHost),
        summary: `restore ${lease.disks.length} disk(s) of ${input.dataSource} on ${targetHost}`,
        startToCloseTimeout: '24 hours',
        heartbeatTimeout: input.timing?.heartbeatTimeout ?? '60 seconds',
      } as ActivityOptions,
      [
        {
          server: lease.server,
          grant: lease.grant,
          dataSource: input.dataSource,
          pointId: lease.pointId,
          disks: lease.disks,
          targetDir: input.target.kind === 'export' ? input.target.dir : undefined,
          format: input.target.kind === 'export' ? input.target.format : 'vhdx',
          restoreId: workflowId,
        },
      ],
    );

    let vm: { vmId?: string; name?: string } = {};
    if (input.target.kind !== 'export') {
      details(`registering the VM on ${targetHost}`);
      const t = input.target;
      const facts = await host.importRestoredVm.executeWithOptions(
        { taskQueue: hostTaskQueue(targetHost), summary: `register restored VM on ${targetHost}` } as ActivityOptions,
        [
          {
            config: lease.vm.config,
            disks: disks.map((d) => ({ diskId: d.diskId, path: d.path })),
            replace: t.kind === 'original',
            name: t.kind === 'host' ? t.name : undefined,
            vmId: t.kind === 'host' && t.newId ? `${vmId}-restored-${workflowInfo().runId.slice(0, 8)}` : undefined,
          },
        ],
      );
      vm = { vmId: facts.vmId, name: facts.name };
    }
    details('done');
    return { dataSource: input.dataSource, pointId: lease.pointId, host: targetHost, target: input.target.kind, disks, vmId: vm.vmId, vmName: vm.name };
  } finally {
    await CancellationScope.nonCancellable(() => server.endRestoreLease({ leaseId: lease.leaseId }));
  }
}
