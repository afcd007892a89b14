// Host activities: what a protection agent does on its Hyper-V host, through the hypervisor
// adapter, pushing disk data to the protection server's storage API. Idempotent, heartbeating,
// and every step first checks that the VM is still here (VmNotOnHost otherwise).
import { createHash } from 'node:crypto';
import { ApplicationFailure, Context, CancelledFailure } from '@temporalio/activity';
import { HypervisorError, type DiskReader, type HypervisorAdapter, type VmFacts } from '../../hypervisor/types';
import { RepositoryError } from '../../repository/errors';
import { StorageApiError, type StorageClient } from '../../storage-api/client';
import { crashPoint } from '../../faults/crash-point';
import { withHeartbeat } from '../heartbeat';
import { ingestDisk, mergeSlots, nonZeroSlots, slotsOfRanges, type IngestPosition } from '../../ingest';
import { HostFailure } from '../failures';
import type {
  CheckpointRequest,
  DiskTransferRequest,
  DiskTransferResult,
  HostActivities,
  TransferHeartbeat,
  ServerEndpoint,
  ReleaseRequest,
  VmLocation,
} from './types';
import { placementCheck } from './placement-check';

export interface HostActivityDeps {
  adapter: HypervisorAdapter;
  /** The storage API client for a protection server; fails ServerNotTrusted for one without a credential here. */
  storageFor: (server: ServerEndpoint) => StorageClient;
  /** Slots per batch (tests make batches small to kill mid-transfer). */
  batchSlots?: number;
  /** Read bandwidth limit per transfer, bytes per second. */
  throttleBytesPerSecond?: number;
}

const NON_RETRYABLE_HYPERVISOR = new Set(['VmNotOnHost', 'VmNotFound', 'CheckpointNotFound']);

/** Turns domain errors into failures the workflow branches on by type. */
export function toFailure(err: unknown): never {
  if (err instanceof ApplicationFailure || err instanceof CancelledFailure) throw err;
  if (err instanceof HypervisorError) {
    const f = NON_RETRYABLE_HYPERVISOR.has(err.type)
      ? ApplicationFailure.nonRetryable(err.message, err.type, err.details)
      : ApplicationFailure.retryable(err.message, err.type, err.details);
    throw f;
  }
  if (err instanceof StorageApiError && err.code === 'CORRUPT') {
    throw ApplicationFailure.nonRetryable(
      `the repository reports damaged data: ${err.message}; run \`hvprotect verify --read-data\`, then a consistency check (\`hvprotect check VM\`) repairs it from the source`,
      'RecoveryPointDamaged',
    );
  }
  if (err instanceof RepositoryError && err.code === 'CORRUPT') {
    throw ApplicationFailure.nonRetryable(
      `damaged data in the recovery point: ${err.message}; run \`hvprotect verify --read-data\`, then a consistency check (\`hvprotect check VM\`) repairs it from the source`,
      'RecoveryPointDamaged',
    );
  }
  if (err instanceof StorageApiError && err.code === 'REPOSITORY_FULL') {
    throw ApplicationFailure.nonRetryable(`the protection server cannot store the backup: ${err.message}`, 'RepositoryFull');
  }
  if (err instanceof StorageApiError) {
    // 4xx other than conflicts and throttling will not get better by retrying.
    const permanent = err.status >= 400 && err.status < 500 && err.status !== 409 && err.status !== 429 && err.status !== 423;
    throw permanent
      ? ApplicationFailure.nonRetryable(`storage API refused: ${err.message}`, 'StorageRefused', { status: err.status, code: err.code })
      : ApplicationFailure.retryable(`storage API: ${err.message}`, 'StorageUnavailable', { status: err.status, code: err.code });
  }
  const e = err as Error;
  // The lab's own refusals (bad config, a VM in the way) do not change on retry.
  if (e?.name === 'LabError') throw ApplicationFailure.nonRetryable(e.message, HostFailure.HypervisorRefused);
  if (e?.name === 'VhdxError') throw ApplicationFailure.nonRetryable(`disk damaged: ${e.message}`, 'DiskDamaged');
  throw err;
}

export function createHostActivities(deps: HostActivityDeps): HostActivities {
  const { adapter } = deps;

  async function ensureHere(vm: string): Promise<void> {
    if (!(await adapter.isVmOnHost(vm))) {
      throw ApplicationFailure.nonRetryable(`VM ${vm} is not on host ${adapter.hostName}`, 'VmNotOnHost', { host: adapter.hostName });
    }
  }

  return {
    async listVms() {
      try {
        return await adapter.listVms();
      } catch (err) {
        return toFailure(err);
      }
    },

    async locateVm(vm: string): Promise<VmLocation> {
      try {
        if (!(await adapter.isVmOnHost(vm))) return { host: adapter.hostName, present: false };
        const f: VmFacts = await adapter.inspectVm(vm);
        return { host: adapter.hostName, present: true, vmId: f.vmId, name: f.name, role: f.replica.role, cluster: f.cluster?.name, facts: f };
      } catch (err) {
        if (err instanceof HypervisorError && (err.type === 'VmNotOnHost' || err.type === 'VmNotFound')) {
          return { host: adapter.hostName, present: false };
        }
        return toFailure(err);
      }
    },

    async inspectVm(vm: string): Promise<VmFacts> {
      try {
        return await adapter.inspectVm(vm);
      } catch (err) {
        return toFailure(err);
      }
    },

    async createBackupCheckpoint(req: CheckpointRequest) {
      return withHeartbeat(async () => {
        try {
          const { cancellationSignal } = Context.current();
          await ensureHere(req.vmId);
          // Cancelled before it began: no checkpoint, the VM untouched.
          if (cancellationSignal.aborted) throw new CancelledFailure('backup cancelled before the checkpoint');
          // 'none': the VM is already quiet (off, saved, paused, replica): leave it as it is.
          const offlineMethod = req.offlineMethod === 'none' ? undefined : req.offlineMethod;
          // The workflow waits for this to end (WAIT_CANCELLATION_COMPLETED), then releases by label
          // whatever the adapter made: a checkpoint cancelled half-way is never left behind.
          const ckpt = await adapter.createBackupCheckpoint(req.vmId, { mode: req.mode, offlineMethod, label: req.label, signal: cancellationSignal });
          crashPoint('agent:after-checkpoint');
          Context.current().log.info('backup checkpoint created', { vmId: req.vmId, checkpointId: ckpt.checkpointId, mode: req.mode, downtimeMs: ckpt.downtimeMs });
          return ckpt;
        } catch (err) {
          return toFailure(err);
        }
      });
    },

    async transferDisk(req: DiskTransferRequest): Promise<DiskTransferResult> {
      const ctx = Context.current();
      const started = Date.now();
      try {
        const storage = deps.storageFor(req.server).withGrant(String(req.grant));
        // The file server's agent reads disks on its shares wherever the VM runs.
        // Our own heartbeat first (a retry here); else the position the workflow carried from the host the VM left.
        const own = ctx.info.heartbeatDetails as TransferHeartbeat | undefined;
        const carried = own ? undefined : req.resume;
        let resume = own;
        let last = own;
        // A VM gone mid-transfer takes the position along in its failure (the workflow carries it on).
        const checkHere = req.viaFileServer
          ? async () => undefined
          : () =>
              ensureHere(req.vmId).catch((err) => {
                if (err instanceof ApplicationFailure && err.type === HostFailure.VmNotOnHost && last) {
                  throw ApplicationFailure.nonRetryable(err.message, HostFailure.VmNotOnHost, { host: adapter.hostName, transfer: last });
                }
                throw err;
              });
        await checkHere();
        const placement = placementCheck(checkHere, adapter.placementCheckMs ?? 0);
        const reader = countingReads(await adapter.openCheckpointDisk(req.vmId, req.checkpointId, req.diskId));
        try {
          // What to read: decided once, and again identically on a retry.
          let kind = resume?.kind ?? req.kind;
          let fallbackReason = resume?.fallbackReason;
          let slots: Iterable<number>;
          let extents: Array<{ offset: number; length: number }> = [];
          if (kind === 'express-full') {
            const changes = req.base?.changeTrackingId
              ? await adapter.changedRanges(req.vmId, req.checkpointId, req.diskId, req.base.changeTrackingId)
              : { tracked: false, ranges: [], reason: 'no change-tracking id recorded for the base point' };
            if (changes.tracked) {
              extents = changes.ranges;
              slots = [...slotsOfRanges(changes.ranges, req.chunkSize, req.virtualSize)];
            } else {
              kind = 'consistency-check';
              fallbackReason = `change tracking lost (${changes.reason ?? 'unknown'}): consistency check`;
              ctx.log.warn(fallbackReason, { diskId: req.diskId });
            }
          }
          let baseSlots: Buffer | undefined;
          if (kind === 'consistency-check' && req.base) {
            baseSlots = (await storage.getIndex({ dataSource: req.dataSource, pointId: req.base.pointId }, req.diskId)).slots;
          }
          if (kind !== 'express-full') {
            // Never-written space reads as zeros; skip it unless the base had data there.
            extents = await reader.allocatedRanges();
            const allocated = slotsOfRanges(extents, req.chunkSize, req.virtualSize);
            slots = baseSlots ? mergeSlots(allocated, nonZeroSlots(baseSlots, req.virtualSize, req.chunkSize)) : allocated;
          }
          const fingerprint = slotSequenceFingerprint(kind, req, extents);
          let startedOverBecause: string | undefined;
          if (carried) {
            const from = carried.readBy ?? 'the host the VM left';
            if (carried.fingerprint === fingerprint && carried.kind === kind) {
              resume = carried;
              ctx.log.info(`carrying on from ${from}'s position`, { diskId: req.diskId, nextSlot: carried.nextSlot, position: carried.position });
            } else {
              startedOverBecause = `the position on ${from} does not apply on ${adapter.hostName} (${carried.kind !== kind ? `${carried.kind} became ${kind}` : 'another sequence of slots to read'}): this disk is read from its start`;
              ctx.log.warn(startedOverBecause, { diskId: req.diskId });
            }
          }
          let batches = 0;
          const pos = await ingestDisk({
            reader,
            storage,
            sessionId: req.sessionId,
            diskId: req.diskId,
            chunkSize: req.chunkSize,
            slots: slots!,
            basePoint: req.base?.pointId ?? null,
            baseSlots: kind === 'consistency-check' ? baseSlots : undefined,
            resume: resume && resume.nextSlot !== undefined ? resume : undefined,
            tuning: deps.batchSlots ? { batchBytes: deps.batchSlots * req.chunkSize } : undefined,
            throttleBytesPerSecond: deps.throttleBytesPerSecond,
            // Cancellation stops reads and uploads; ingestDisk returns only once none is in flight,
            // and the workflow (WAIT_CANCELLATION_COMPLETED) releases the checkpoint only after that.
            signal: ctx.cancellationSignal,
            onProgress: async (p, diskOffset) => {
              // The position travels in the heartbeat only: the pending activity shows it (Web UI,
              // `describe`, the CLI's progress bar) and a retry resumes there, and not one history
              // event is added however long the disk takes.
              const details: TransferHeartbeat = {
                ...p, kind, fallbackReason, diskId: req.diskId, position: diskOffset, virtualSize: req.virtualSize, at: Date.now(), readBy: adapter.hostName, fingerprint,
              };
              ctx.heartbeat(details);
              last = details;
              if (++batches === 2) crashPoint('agent:mid-transfer');
              if (ctx.cancellationSignal.aborted) throw new CancelledFailure('backup cancelled');
              await placement.afterBatch();
            },
          });
          const result: DiskTransferResult = {
            diskId: req.diskId,
            readBy: adapter.hostName,
            kind,
            fallbackReason,
            chunkCount: Math.ceil(req.virtualSize / req.chunkSize),
            changedChunks: pos.changedChunks,
            bytesRead: pos.bytesRead,
            bytesSent: pos.bytesSent,
            chunksDeduplicated: pos.chunksDeduplicated,
            resumedFrom: resume?.nextSlot ?? 0,
            ...(resume && resume === carried ? { resumedAfter: carried.readBy ?? 'the previous host' } : {}),
            ...(startedOverBecause ? { startedOverBecause } : {}),
            attemptBytesRead: reader.bytesRead,
            durationMs: Date.now() - started,
          };
          ctx.log.info('disk transferred', { ...result });
          return result;
        } finally {
          await reader.close();
        }
      } catch (err) {
        if (ctx.cancellationSignal.aborted) throw new CancelledFailure('backup cancelled: transfer stopped');
        return toFailure(err);
      }
    },

    async releaseBackupCheckpoint(req: ReleaseRequest) {
      return withHeartbeat(async () => {
        try {
          await ensureHere(req.vmId);
          crashPoint('agent:before-release');
          const released: string[] = [];
          if (req.checkpointId) {
            await adapter.releaseCheckpoint(req.vmId, req.checkpointId);
            released.push(req.checkpointId);
          }
          if (adapter.releaseCheckpointsByLabel) {
            for (const id of await adapter.releaseCheckpointsByLabel(req.vmId, req.label)) if (!released.includes(id)) released.push(id);
          }
          crashPoint('agent:after-release');
          Context.current().log.info('backup checkpoint released', { vmId: req.vmId, released });
          return { released };
        } catch (err) {
          return toFailure(err);
        }
      });
    },
  };
}

/** Names the sequence of slots a transfer reads: equal on two hosts only when a position on one means the same on the other. */
function slotSequenceFingerprint(kind: string, req: DiskTransferRequest, extents: Array<{ offset: number; length: number }>): string {
  const h = createHash('sha256').update(`${kind}\n${req.checkpointId}\n${req.diskId}\n${req.chunkSize}\n${req.virtualSize}\n${req.base?.pointId ?? ''}\n`);
  for (const e of extents) h.update(`${e.offset}+${e.length};`);
  return h.digest('hex').slice(0, 32);
}

/** The disk reader, counting the bytes this attempt really read (the result reports them). */
function countingReads(reader: DiskReader): DiskReader & { bytesRead: number } {
  const counted = {
    bytesRead: 0,
    virtualSize: reader.virtualSize,
    async read(offset: number, length: number, signal?: AbortSignal) {
      const data = await reader.read(offset, length, signal);
      counted.bytesRead += data.length;
      return data;
    },
    ...(reader.readInto
      ? {
          async readInto(target: Buffer, offset: number, signal?: AbortSignal) {
            await reader.readInto!(target, offset, signal);
            counted.bytesRead += target.length;
          },
        }
      : {}),
    allocatedRanges: () => reader.allocatedRanges(),
    close: () => reader.close(),
  };
  return counted;
}
