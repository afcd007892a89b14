// Where is the VM now? Asks every agent at once (each probe bounded by a schedule-to-start
// timeout, so a host that is down costs nothing unless the VM is nowhere else) and answers as
// soon as the copy the protection is about answers.
import { ApplicationFailure, CancellationScope, patched, sleep } from '@temporalio/workflow';
import type { ActivityInterfaceFor, ActivityOptions } from '@temporalio/workflow';
import type { HostActivities, VmLocation } from '../activities/host/types';
import type { ServerActivities } from '../activities/server/types';
import { hostTaskQueue } from '../temporal/task-queues';

/** Prefers the copy the data source protects: the replica server for 'replica', else the primary. */
export function pickOwner(probes: VmLocation[], role?: 'primary' | 'replica'): VmLocation | undefined {
  const present = probes.filter((p) => p.present);
  if (role === 'replica') return present.find((p) => p.role === 'replica');
  return present.find((p) => p.role !== 'replica') ?? (role === undefined ? present[0] : undefined);
}

export interface LocateOptions {
  vm: string;
  role?: 'primary' | 'replica';
  locateTimeout: string;
  /** Give up after this long without finding the VM (ms). */
  waitTimeoutMs: number;
  onRound?: (round: number) => void;
  /**
   * Where the VM was last found (its previous backup's host): probed at once in the first round,
   * beside the agent list, so a VM that stayed put is found without waiting for that list.
   */
  hint?: string;
}

export async function locateVmOwner(
  host: ActivityInterfaceFor<Pick<HostActivities, 'locateVm'>>,
  server: Pick<ServerActivities, 'listHosts'>,
  o: LocateOptions,
): Promise<VmLocation> {
  const since = Date.now();
  for (let round = 0; ; round++) {
    o.onRound?.(round);
    // The hint's probe starts beside the agent list: one step less on the way to a VM that stayed.
    const hint = round === 0 && o.hint && patched('locate-hint-first') ? o.hint : undefined;
    const listing = server.listHosts();
    let hosts: string[] = hint ? [] : await listing;
    const probes: VmLocation[] = [];
    // The probes of one round: those still out when the owner answered are cancelled, so a
    // silent host's probe neither lingers in the Web UI nor wakes the workflow when it times out.
    const probing = new CancellationScope();
    await new Promise<void>((resolve, reject) => {
      let pending = 0;
      let listed = !hint;
      let done = false;
      const finish = () => {
        done = true;
        resolve();
      };
      const probe = (h: string, scope: CancellationScope) => {
        pending++;
        void scope.run(async () => {
          host.locateVm
            .executeWithOptions(
              {
                taskQueue: hostTaskQueue(h),
                scheduleToStartTimeout: o.locateTimeout,
                startToCloseTimeout: '30 seconds',
                retry: { maximumAttempts: 1 },
                summary: `is ${o.vm} on ${h}?`,
              } as ActivityOptions,
              [o.vm],
            )
            .catch((): VmLocation => ({ host: h, present: false }))
            .then((loc) => {
              probes.push(loc);
              pending--;
              if (done) return;
              const decisive = loc.present && (o.role === 'replica') === (loc.role === 'replica');
              if (decisive && (pending > 0 || !listed) && patched('cancel-losing-locate-probes')) probing.cancel();
              if ((pending === 0 && listed) || decisive) finish();
            });
        });
      };
      if (!hint) {
        for (const h of hosts) probe(h, probing);
        if (pending === 0) finish();
        return;
      }
      // The hint's probe has a scope of its own: cancelled when the list shows no agent there
      // (it would wait out its schedule-to-start timeout for nothing).
      const hinted = new CancellationScope({ parent: probing, cancellable: true });
      probe(hint, hinted);
      listing.then(
        (listedHosts) => {
          hosts = listedHosts;
          listed = true;
          if (done) return;
          if (!hosts.includes(hint)) hinted.cancel();
          for (const h of hosts) if (h !== hint) probe(h, probing);
          if (pending === 0) finish();
        },
        (err: unknown) => {
          if (done) return;
          done = true;
          probing.cancel();
          reject(err);
        },
      );
    });
    const found = pickOwner(probes, o.role);
    if (found) return found;
    if (Date.now() - since > o.waitTimeoutMs) {
      throw ApplicationFailure.nonRetryable(
        `VM ${o.vm} was not found on any of the hosts with a running agent (${hosts.join(', ') || 'none'}) ` +
          `for ${Math.round(o.waitTimeoutMs / 60000)} min: its host may be down for good or the VM deleted; ` +
          "start the agent on the VM's host or remove the protection",
        'VmUnreachable',
      );
    }
    await sleep(Math.min(30_000, 2_000 * 2 ** Math.min(round, 4)));
  }
}
