// backupVm: one run = one recovery point of one VM, the way DPM backs up a Hyper-V guest.
//
//   owner  ← resolve the VM's owner host            (probe the agents; follows migrations)
//   facts  ← inspectVm                               host
//   mode   ← decideBackupMode(facts)                 pure: online | offline + reasons
//   plan   ← planBackup                              server: initial replica | express full | consistency check
//   ckpt   ← createBackupCheckpoint                  host: offline = save/pause → checkpoint → resume
//   try      transferDisk × disks, all at once       host: within its transfer limit; heartbeats its position, resumes there
//            commitRecoveryPoint                     server: atomic, only now does the point exist
//   finally  releaseBackupCheckpoint                 host: merge / reference point; resume the VM
//   enforceRetention                                 server: retention range + shadow storage limit
//
// A host activity that finds the VM gone fails VmNotOnHost: the owner is resolved again and the
// same step carries on on the new host, a bounded number of times.
import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  TimeoutFailure,
  defineQuery,
  defineSignal,
  isCancellation,
  log,
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { ActivityOptions } from '@temporalio/workflow';
import type { Duration } from '@temporalio/common';
import { msToNumber } from '@temporalio/common/lib/time';
import type { BackupCheckpoint, VmFacts } from '../hypervisor/types';
import type { DiskTransferResult, HostActivities, TransferKind, VmLocation } from '../activities/host/types';
import type { BackupPlan, CommittedPoint, ServerActivities } from '../activities/server/types';
import { decideBackupMode, BackupModeRefused, type BackupModeDecision, type BackupModePolicy } from '../protection/backup-mode';
import { SA } from '../temporal/search-attribute-keys';
import { locateVmOwner } from './locate';
import { SERVER_TASK_QUEUE, hostTaskQueue, hostTransferQueue } from '../temporal/task-queues';

export interface BackupVmInput {
  dataSource: string;
  /** VM id (stable across migrations); a name works too. */
  vm: string;
  /** Which copy to protect when Hyper-V Replica keeps two: the replica is read on the replica server. */
  role?: 'primary' | 'replica';
  kind?: 'auto' | 'consistency-check';
  policy?: BackupModePolicy & {
    /** How many times the backup may follow the VM to another host (default 5). */
    maxRelocations?: number;
    /** How long to wait for the VM's host to come back before failing (default 30 min). */
    hostWaitTimeout?: string;
  };
  /** Tests shorten these; defaults suit production. */
  timing?: { heartbeatTimeout?: string; hostScheduleToStart?: string; transferScheduleToStart?: string; locateTimeout?: string };
}

export interface DiskProgress {
  diskId: string;
  virtualSize: number;
  position: number;
  bytesRead: number;
  bytesSent: number;
  done: boolean;
}

export interface BackupProgress {
  step: string;
  vm: string;
  host?: string;
  mode?: string;
  kind?: string;
  relocations: number;
  disks: DiskProgress[];
  bytesRead: number;
  bytesSent: number;
  /** bytes read per second over the transfer so far */
  rate: number;
  transferStartedAt?: number;
}

export interface BackupVmResult {
  dataSource: string;
  pointId: string;
  vmName: string;
  host: string;
  mode: BackupModeDecision['mode'];
  modeReasons: string[];
  kind: TransferKind;
  downtimeMs?: number;
  relocations: number;
  disks: DiskTransferResult[];
  retentionDeleted: string[];
}

export interface TransferProgressSignal {
  diskId: string;
  position: number;
  bytesRead: number;
  bytesSent: number;
  at: number;
}

export const backupProgressQuery = defineQuery<BackupProgress>('progress');
export const transferProgressSignal = defineSignal<[TransferProgressSignal]>('transferProgress');



const NON_RETRYABLE_HOST = ['VmNotOnHost', 'VmNotFound', 'CheckpointNotFound', 'DiskDamaged', 'StorageRefused', 'ChangeTrackingLost', 'RepositoryFull', 'RecoveryPointDamaged', 'LabRefused'];

export async function backupVm(input: BackupVmInput): Promise<BackupVmResult> {
  const { workflowId, runId } = workflowInfo();
  const maxRelocations = input.policy?.maxRelocations ?? 5;
  const timing = {
    heartbeatTimeout: input.timing?.heartbeatTimeout ?? '60 seconds',
    hostScheduleToStart: input.timing?.hostScheduleToStart ?? '2 minutes',
    // Transfers may wait behind the host's limit of concurrent transfers: be patient.
    transferScheduleToStart: input.timing?.transferScheduleToStart ?? '1 hour',
    locateTimeout: input.timing?.locateTimeout ?? '20 seconds',
    hostWaitTimeoutMs: msOf(input.policy?.hostWaitTimeout ?? '30 minutes'),
  };
  // Server steps heartbeat too: a protection server killed mid-step is retried in seconds.
  const server = proxyActivities<ServerActivities>({
    taskQueue: SERVER_TASK_QUEUE,
    startToCloseTimeout: '10 minutes',
    heartbeatTimeout: timing.heartbeatTimeout as Duration,
    retry: { initialInterval: '1 second', maximumInterval: '30 seconds', maximumAttempts: 10, nonRetryableErrorTypes: ['BackupAlreadyRunning', 'ShadowStorageFull', 'UnknownDataSource', 'RepositoryFull'] },
  });
  const host = proxyActivities<HostActivities>({
    startToCloseTimeout: '10 minutes',
    scheduleToStartTimeout: timing.hostScheduleToStart as Duration,
    retry: { initialInterval: '1 second', maximumInterval: '20 seconds', maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE_HOST },
  });

  // ---- state and handlers -------------------------------------------------------------------
  const progress: BackupProgress = { step: 'starting', vm: input.vm, relocations: 0, disks: [], bytesRead: 0, bytesSent: 0, rate: 0 };
  setHandler(backupProgressQuery, () => progress);
  setHandler(transferProgressSignal, (p) => {
    const d = progress.disks.find((x) => x.diskId === p.diskId);
    if (!d || d.done) return;
    Object.assign(d, { position: p.position, bytesRead: p.bytesRead, bytesSent: p.bytesSent });
    summarise();
  });
  const summarise = () => {
    progress.bytesRead = progress.disks.reduce((s, d) => s + d.bytesRead, 0);
    progress.bytesSent = progress.disks.reduce((s, d) => s + d.bytesSent, 0);
    const elapsed = progress.transferStartedAt ? (Date.now() - progress.transferStartedAt) / 1000 : 0;
    progress.rate = elapsed > 0 ? Math.round(progress.bytesRead / elapsed) : 0;
    setCurrentDetails(describe(progress));
  };
  const step = (name: string) => {
    progress.step = name;
    setCurrentDetails(describe(progress));
    log.info(`backup step: ${name}`, { vm: input.vm, host: progress.host });
  };
  upsertSearchAttributes([
    { key: SA.dataSource, value: input.dataSource },
    { key: SA.vm, value: input.vm },
  ]);

  // ---- where the VM is, and following it -----------------------------------------------------
  let owner: VmLocation | undefined;

  async function resolveOwner(reason: string): Promise<VmLocation> {
    const found = await locateVmOwner(host, server, {
      vm: input.vm,
      role: input.role,
      locateTimeout: timing.locateTimeout,
      waitTimeoutMs: timing.hostWaitTimeoutMs,
      onRound: (round) => step(`locating VM (${reason}${round ? `, try ${round + 1}` : ''})`),
    });
    if (owner && owner.host !== found.host) log.info('VM moved', { from: owner.host, to: found.host });
    owner = found;
    progress.host = found.host;
    upsertSearchAttributes([
      { key: SA.host, value: found.host },
      ...(found.cluster ? [{ key: SA.cluster, value: found.cluster }] : []),
    ]);
    return found;
  }

  /** Runs a host step on the owner; follows the VM if it moved or its host stopped answering. */
  let relocation: Promise<VmLocation> | undefined;
  async function onOwner<T>(what: string, run: (queue: string, hostName: string) => Promise<T>): Promise<T> {
    for (;;) {
      if (!owner) owner = await resolveOwner('first look');
      const tried = owner.host;
      try {
        return await run(hostTaskQueue(owner.host), owner.host);
      } catch (err) {
        const moved = failureType(err) === 'VmNotOnHost';
        const hostSilent = isScheduleToStartTimeout(err);
        if (!moved && !hostSilent) throw err;
        // Disks transfer in parallel: the first step to notice the move follows the VM for all.
        if (relocation) {
          await relocation;
          continue;
        }
        if (owner.host !== tried) continue;
        if (progress.relocations >= maxRelocations) {
          throw ApplicationFailure.nonRetryable(
            `gave up following VM ${input.vm} after ${progress.relocations} moves (during ${what})`,
            'TooManyRelocations',
          );
        }
        progress.relocations++;
        log.warn(`${what}: ${moved ? 'VM is no longer on' : 'no agent answered on'} ${owner.host}; resolving the owner again`);
        relocation = resolveOwner(moved ? `moved away from ${owner.host}` : `${owner.host} not answering`);
        try {
          owner = await relocation;
        } finally {
          relocation = undefined;
        }
      }
    }
  }

  // ---- the procedure --------------------------------------------------------------------------
  step('acquiring the backup lease');
  await server.acquireBackupLease({ dataSource: input.dataSource, workflowId, runId });
  try {
    await resolveOwner('first look');
    step('inspecting the VM');
    const facts: VmFacts = await onOwner('inspect', (taskQueue, h) =>
      // Inspecting is quick (a Get-VM and friends): a lost task is retried in 2 minutes, not 10.
      host.inspectVm.executeWithOptions({ taskQueue, summary: `inspect ${input.vm} on ${h}`, startToCloseTimeout: '2 minutes' } as ActivityOptions, [input.vm]),
    );
    progress.vm = facts.name;
    upsertSearchAttributes([{ key: SA.vm, value: facts.name }]);

    let decision: BackupModeDecision;
    try {
      decision = decideBackupMode(facts, input.policy);
    } catch (err) {
      if (err instanceof BackupModeRefused) throw ApplicationFailure.nonRetryable(err.message, err.type, { reasons: err.reasons });
      throw err;
    }
    progress.mode = decision.mode;
    upsertSearchAttributes([{ key: SA.mode, value: decision.mode }]);
    if (decision.reasons.length) log.info('offline backup', { reasons: decision.reasons });

    step('planning');
    const plan: BackupPlan = await server.planBackup({
      dataSource: input.dataSource,
      vmId: facts.vmId,
      vmName: facts.name,
      disks: facts.disks.map((d) => ({ diskId: d.diskId, virtualSize: d.virtualSize })),
      requestedKind: input.kind ?? 'auto',
    });
    progress.kind = plan.kind;
    upsertSearchAttributes([{ key: SA.kind, value: plan.kind }]);

    // A backup checkpoint left by an earlier run that could not release it (its host was down, the
    // reply was lost) would block ours and grow forever: the lease says no other backup runs, so
    // release it first.
    const leftovers = facts.checkpoints.filter((c) => c.kind === 'backup' && c.label !== workflowId);
    for (const c of leftovers) {
      step(`releasing a leftover backup checkpoint ${c.checkpointId}${c.label ? ` of ${c.label}` : ''}`);
      await onOwner('release leftover', (taskQueue, h) =>
        host.releaseBackupCheckpoint.executeWithOptions(
          { taskQueue, summary: `release leftover checkpoint ${c.checkpointId} of ${facts.name} on ${h}`, heartbeatTimeout: timing.heartbeatTimeout } as ActivityOptions,
          [{ vmId: facts.vmId, label: c.label ?? `leftover-${c.checkpointId}`, checkpointId: c.checkpointId }],
        ),
      );
    }

    let checkpoint: BackupCheckpoint | undefined;
    let committed: CommittedPoint | undefined;
    const results: DiskTransferResult[] = [];
    try {
      step(decision.mode === 'online' ? 'creating the backup checkpoint (VSS in the guest)' : `creating the backup checkpoint (offline, ${decision.quiesce})`);
      checkpoint = await onOwner('checkpoint', (taskQueue, h) =>
        host.createBackupCheckpoint.executeWithOptions(
          { taskQueue, summary: `${decision.mode} checkpoint of ${facts.name} on ${h}`, heartbeatTimeout: timing.heartbeatTimeout } as ActivityOptions,
          [{ vmId: facts.vmId, mode: decision.mode, offlineMethod: decision.quiesce === 'save' || decision.quiesce === 'pause' ? decision.quiesce : 'none', label: workflowId }],
        ),
      );
      const ckpt = checkpoint;
      progress.disks = ckpt.disks.map((d) => ({ diskId: d.diskId, virtualSize: d.virtualSize, position: 0, bytesRead: 0, bytesSent: 0, done: false }));
      progress.transferStartedAt = Date.now();

      const agents = await server.listHosts();
      const transferOne = async (disk: BackupCheckpoint['disks'][number], i: number): Promise<void> => {
        const planned = plan.disks.find((p) => p.diskId === disk.diskId);
        // A disk on an SMB share is read by the file server's agent when one runs (no hop
        // through the Hyper-V host), else by the VM's host over SMB.
        const fileServer = facts.disks.find((d) => d.diskId === disk.diskId && d.storage === 'smb')?.fileServer;
        const viaFileServer = fileServer !== undefined && agents.includes(fileServer) ? fileServer : undefined;
        if (!planned) throw ApplicationFailure.nonRetryable(`disk ${disk.diskId} appeared after planning`, 'DiskSetChanged');
        const result = await onOwner(`transfer ${disk.diskId}`, (_queue, ownerHost) => {
          const h = viaFileServer ?? ownerHost;
          return host.transferDisk.executeWithOptions(
            {
              taskQueue: hostTransferQueue(h),
              scheduleToStartTimeout: timing.transferScheduleToStart,
              summary: `${planned.kind} of ${facts.name} disk ${disk.diskId} from ${h}`,
              startToCloseTimeout: '24 hours',
              heartbeatTimeout: timing.heartbeatTimeout,
              // A failed sibling cancels this transfer; the checkpoint is released only once it stopped reading.
              cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
              retry: { initialInterval: '1 second', maximumInterval: '30 seconds', maximumAttempts: 50, nonRetryableErrorTypes: NON_RETRYABLE_HOST },
            } as ActivityOptions,
            [
              {
                workflowId,
                dataSource: input.dataSource,
                sessionId: plan.sessionId,
                vmId: facts.vmId,
                checkpointId: ckpt.checkpointId,
                diskId: disk.diskId,
                virtualSize: disk.virtualSize,
                chunkSize: planned.chunkSize,
                changeTrackingId: disk.changeTrackingId,
                kind: planned.kind,
                base: planned.base,
                viaFileServer: viaFileServer !== undefined,
              },
            ],
          );
        });
        results[i] = result;
        const d = progress.disks.find((x) => x.diskId === disk.diskId)!;
        Object.assign(d, { position: disk.virtualSize, bytesRead: result.bytesRead, bytesSent: result.bytesSent, done: true });
        summarise();
      };

      if (patched('parallel-disk-transfer')) {
        // The disks of one VM go at once; the host's transfer queue keeps them within its limit.
        step(`transferring ${ckpt.disks.length === 1 ? `disk ${ckpt.disks[0].diskId}` : `${ckpt.disks.length} disks`}`);
        const transfers = new CancellationScope();
        let firstFailure: unknown;
        await transfers.run(() =>
          Promise.allSettled(
            ckpt.disks.map((disk, i) =>
              transferOne(disk, i).catch((err: unknown) => {
                firstFailure ??= err;
                transfers.cancel();
              }),
            ),
          ),
        );
        if (firstFailure !== undefined) throw firstFailure;
      } else {
        for (const [i, disk] of ckpt.disks.entries()) {
          step(`transferring disk ${disk.diskId}`);
          await transferOne(disk, i);
        }
      }

      const kind = overallKind(plan.kind, results);
      progress.kind = kind;
      upsertSearchAttributes([{ key: SA.kind, value: kind }]);
      step('committing the recovery point');
      committed = await server.commitRecoveryPoint({
        dataSource: input.dataSource,
        sessionId: plan.sessionId,
        workflowId,
        vm: { vmId: facts.vmId, name: facts.name, host: owner!.host, cluster: facts.cluster?.name, config: facts.config, configPath: facts.configPath, guestWriteSeq: ckpt.guestWriteSeq },
        mode: decision.mode,
        kind,
        modeReasons: decision.reasons,
        downtimeMs: ckpt.downtimeMs,
        consistency: ckpt.consistency,
        checkpointCreatedAt: ckpt.createdAt,
        startedAt: workflowInfo().startTime.toISOString(),
        disks: results.map((r) => {
          const c = ckpt.disks.find((x) => x.diskId === r.diskId)!;
          const f = facts.disks.find((x) => x.diskId === r.diskId);
          return {
            ...r,
            virtualSize: c.virtualSize,
            chunkSize: plan.disks.find((p) => p.diskId === r.diskId)!.chunkSize,
            changeTrackingId: c.changeTrackingId,
            fileName: baseName(f?.basePath ?? `${r.diskId}.vhdx`),
          };
        }),
      });
    } finally {
      // Leftover checkpoints are what Hyper-V admins hate most: always release, also on
      // failure or cancellation, and also one whose creation reply was lost (by label).
      await CancellationScope.nonCancellable(async () => {
        step('releasing the backup checkpoint');
        let releaseError: unknown;
        try {
          await onOwner('release', (taskQueue, h) =>
            host.releaseBackupCheckpoint.executeWithOptions(
              { taskQueue, summary: `release backup checkpoint of ${progress.vm} on ${h}`, heartbeatTimeout: timing.heartbeatTimeout, retry: { maximumAttempts: 20, nonRetryableErrorTypes: ['VmNotOnHost', 'VmNotFound'] } } as ActivityOptions,
              [{ vmId: input.vm, label: workflowId, checkpointId: checkpoint?.checkpointId }],
            ),
          );
        } catch (err) {
          // VM deleted, or nowhere to be found: nothing can be released now; the next backup of
          // the VM releases leftovers first. Anything else is this backup's failure.
          const t = failureType(err);
          if (t !== 'VmNotFound' && t !== 'VmUnreachable') releaseError = err;
          else log.warn('could not release the backup checkpoint: VM gone', { type: t });
        }
        // Uploaded chunks stop being protected from GC once the session is gone.
        if (!committed) await server.abortSession({ dataSource: input.dataSource, sessionId: plan.sessionId }).catch(() => undefined);
        if (releaseError) throw releaseError;
      });
    }

    step('applying retention and the shadow storage limit');
    const retention = await server.enforceRetention({ dataSource: input.dataSource, keepPointId: committed!.pointId });
    step('done');
    return {
      dataSource: input.dataSource,
      pointId: committed!.pointId,
      vmName: facts.name,
      host: owner!.host,
      mode: decision.mode,
      modeReasons: decision.reasons,
      kind: progress.kind as TransferKind,
      downtimeMs: checkpoint?.downtimeMs,
      relocations: progress.relocations,
      disks: results,
      retentionDeleted: retention.deleted.map((d) => d.pointId),
    };
  } catch (err) {
    if (!isCancellation(err)) step(`failed: ${(err as Error).message}`);
    throw err;
  } finally {
    await CancellationScope.nonCancellable(() => server.releaseBackupLease({ dataSource: input.dataSource, workflowId }));
  }
}

// ---- pure helpers -------------------------------------------------------------------------------

function overallKind(planned: TransferKind, results: DiskTransferResult[]): TransferKind {
  if (planned === 'initial-replica') return planned;
  return results.some((r) => r.kind === 'consistency-check') ? 'consistency-check' : planned;
}

function failureType(err: unknown): string | undefined {
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

function baseName(p: string): string {
  const parts = p.split(/[\\/]/);
  return parts[parts.length - 1] || p;
}

/** The SDK's own duration parser (as for every timeout), with a failure the workflow names. */
function msOf(d: string): number {
  try {
    return msToNumber(d as Duration);
  } catch {
    throw ApplicationFailure.nonRetryable(`invalid duration "${d}": e.g. "30 minutes", "15 s", "2h"`, 'InvalidInput');
  }
}

function describe(p: BackupProgress): string {
  const lines = [`**${p.step}**`, `VM ${p.vm}${p.host ? ` on ${p.host}` : ''}${p.mode ? `, ${p.mode}` : ''}${p.kind ? `, ${p.kind}` : ''}`];
  for (const d of p.disks) {
    const pct = d.virtualSize ? Math.floor((100 * d.position) / d.virtualSize) : 0;
    lines.push(`disk ${d.diskId}: ${d.done ? 'done' : `${pct}%`}, read ${mib(d.bytesRead)}, sent ${mib(d.bytesSent)}`);
  }
  if (p.rate) lines.push(`rate ${mib(p.rate)}/s`);
  if (p.relocations) lines.push(`followed the VM ${p.relocations} time(s)`);
  return lines.join('\n');
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}
