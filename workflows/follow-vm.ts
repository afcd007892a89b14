// Following a VM: where it runs now (probe the agents, see locate.ts), and running a host step on
// that host, locating it again when the step finds the VM gone or its host silent.
import { ActivityFailure, ApplicationFailure, TimeoutFailure, log, patched, upsertSearchAttributes } from '@temporalio/workflow';
import type { ActivityInterfaceFor } from '@temporalio/workflow';
import type { HostActivities, VmLocation } from '../activities/host/types';
import type { ServerActivities } from '../activities/server/types';
import { HostFailure, JobFailure } from '../activities/failures';
import { SA } from '../temporal/search-attribute-keys';
import { hostTaskQueue } from '../temporal/task-queues';
import { locateVmOwner } from './locate';

export interface FollowOptions {
  vm: string;
  role?: 'primary' | 'replica';
  maxRelocations: number;
  locateTimeout: string;
  hostWaitTimeoutMs: number;
  /** Where the VM was last found: probed first on the first look (locate.ts). */
  hint?: string;
  /** Reports what is being done (progress step). */
  onStep: (what: string) => void;
  /** Told every time the VM is found (first look and after moves). */
  onFound: (owner: VmLocation, relocations: number) => void;
}

export interface VmFollower {
  /** Where the VM is now (locates it the first time). */
  owner(): Promise<VmLocation>;
  /** Runs a host step on the VM's host; follows the VM if it moved or its host stopped answering. */
  onOwner<T>(what: string, run: (queue: string, host: string) => Promise<T>): Promise<T>;
  readonly current: VmLocation | undefined;
}

export function followVm(
  host: ActivityInterfaceFor<Pick<HostActivities, 'locateVm'>>,
  server: Pick<ServerActivities, 'listHosts'>,
  o: FollowOptions,
): VmFollower {
  let owner: VmLocation | undefined;
  let relocations = 0;
  // Disks transfer in parallel: the first step to notice the move follows the VM for all.
  let relocation: Promise<VmLocation> | undefined;

  async function resolve(reason: string): Promise<VmLocation> {
    const found = await locateVmOwner(host, server, {
      vm: o.vm,
      role: o.role,
      locateTimeout: o.locateTimeout,
      waitTimeoutMs: o.hostWaitTimeoutMs,
      // A later look follows a move or a silent host: the last place is the wrong one to favour.
      hint: owner ? undefined : o.hint,
      onRound: (round) => o.onStep(`locating VM (${reason}${round ? `, try ${round + 1}` : ''})`),
    });
    if (owner && owner.host !== found.host) log.info('VM moved', { from: owner.host, to: found.host });
    owner = found;
    upsertSearchAttributes([{ key: SA.host, value: found.host }, ...(found.cluster ? [{ key: SA.cluster, value: found.cluster }] : [])]);
    o.onFound(found, relocations);
    return found;
  }

  return {
    get current() {
      return owner;
    },
    owner: async () => owner ?? resolve('first look'),
    async onOwner(what, run) {
      for (;;) {
        const here = owner ?? (await resolve('first look'));
        try {
          return await run(hostTaskQueue(here.host), here.host);
        } catch (err) {
          const moved = failureType(err) === HostFailure.VmNotOnHost;
          if (!moved && !isScheduleToStartTimeout(err)) throw err;
          if (relocation) {
            await relocation;
            continue;
          }
          if (owner && owner.host !== here.host) continue;
          if (!moved && patched('busy-host-is-not-silent')) {
            // Not picked up in time: a silent host, or one whose transfer slots are all taken
            // (a transfer may wait hours behind others). Its agent answering the locate probe and
            // the VM still there means busy: wait again there, without counting a move.
            relocation = resolve(`${here.host} did not pick up ${what}`);
            try {
              await relocation;
            } finally {
              relocation = undefined;
            }
            if (owner!.host === here.host) {
              log.info(`${what}: ${here.host} answers and still has the VM; waiting again for a slot there`);
              continue;
            }
            if (relocations >= o.maxRelocations) {
              throw ApplicationFailure.nonRetryable(`gave up following VM ${o.vm} after ${relocations} moves (during ${what})`, JobFailure.TooManyRelocations);
            }
            relocations++;
            o.onFound(owner!, relocations);
            continue;
          }
          if (relocations >= o.maxRelocations) {
            throw ApplicationFailure.nonRetryable(`gave up following VM ${o.vm} after ${relocations} moves (during ${what})`, JobFailure.TooManyRelocations);
          }
          relocations++;
          log.warn(`${what}: ${moved ? 'VM is no longer on' : 'no agent answered on'} ${here.host}; resolving the owner again`);
          relocation = resolve(moved ? `moved away from ${here.host}` : `${here.host} not answering`);
          try {
            await relocation;
          } finally {
            relocation = undefined;
          }
        }
      }
    },
  };
}

/** The ApplicationFailure type at the root of a failure chain. */
export function failureType(err: unknown): string | undefined {
  let e: unknown = err;
  for (let i = 0; i < 5 && e; i++) {
    if (e instanceof ApplicationFailure && e.type) return e.type;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function isScheduleToStartTimeout(err: unknown): boolean {
  return err instanceof ActivityFailure && err.cause instanceof TimeoutFailure && err.cause.timeoutType === 'SCHEDULE_TO_START';
}
