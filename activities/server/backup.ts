// Server-side steps of a backup: plan against the repository, commit, retention. They run in the
// protection server process that owns the data source, next to its repository.
import { ApplicationFailure, Context } from '@temporalio/activity';
import { Repository, RepositoryError, type RecoveryPointManifest } from '../../repository';
import type { GrantAuthority } from '../../storage-api/grants';
import type { TokenStore } from '../../storage-api/tokens';
import type { ProtectionMetrics } from '../../metrics/metrics';
import { crashPoint } from '../../faults/crash-point';
import { ServerFailure } from '../failures';
import { withHeartbeat } from '../heartbeat';
import type { ServerEndpoint, TransferKind } from '../host/types';
import type {
  BackupPlan,
  BackupPlanRequest,
  CommitRequest,
  CommittedPoint,
  RetentionResult,
  ServerActivities,
} from './types';

export interface ServerActivityDeps {
  repository: Repository;
  tokens: TokenStore;
  /** Mints the per-job grants agents present to this server's storage API. */
  grants: GrantAuthority;
  /** This server, as agents address it. */
  self: ServerEndpoint;
  metrics?: ProtectionMetrics;
  /** Recovery points a data source may gain in any hour (default DEFAULT_MAX_POINTS_PER_HOUR). */
  maxPointsPerHour?: number;
}

/** One every five minutes: far above any schedule (DPM's shortest is 30 minutes), far below a flood. */
export const DEFAULT_MAX_POINTS_PER_HOUR = 12;

/** Converts repository errors into failures the workflow branches on. */
function asFailure(err: unknown): never {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    throw ApplicationFailure.nonRetryable(
      `the repository volume is full (${code}): free space, lower shadow storage limits or delete old points, then run hvprotect gc`,
      'RepositoryFull',
    );
  }
  if (err instanceof RepositoryError) {
    const msg = err.hint ? `${err.message}: ${err.hint}` : err.message;
    if (err.code === 'SHADOW_STORAGE_FULL') throw ApplicationFailure.nonRetryable(msg, 'ShadowStorageFull', err.details);
    if (err.code === 'INVALID_ARGUMENT' || err.code === 'CORRUPT') throw ApplicationFailure.nonRetryable(msg, `Repository${err.code}`, err.details);
    throw ApplicationFailure.retryable(msg, `Repository${err.code}`, err.details);
  }
  throw err;
}

export function createServerActivities(deps: ServerActivityDeps): ServerActivities {
  const { repository } = deps;
  const perHour = deps.maxPointsPerHour ?? DEFAULT_MAX_POINTS_PER_HOUR;
  /** Refuses a point past the hourly bound, with what to do (a flood must not push real history out). */
  const checkRate = (ds: string, points: ReadonlyArray<{ createdAt: string }>) => {
    const since = Date.now() - 3_600_000;
    const recent = points.filter((p) => Date.parse(p.createdAt) > since).length;
    if (recent >= perHour) {
      throw ApplicationFailure.nonRetryable(
        `${ds} already has ${recent} recovery points from the last hour, the most this server keeps (--max-points-per-hour ${perHour}): ` +
          'this backup is refused; check what starts backups of it so often (schedules, scripts), or raise the limit',
        ServerFailure.TooManyPoints,
      );
    }
  };
  const activities: ServerActivities = {
    async listHosts() {
      return deps.tokens
        .list()
        .filter((t) => t.role === 'agent' && !t.revokedAt)
        .map((t) => t.name)
        .sort();
    },

    async planBackup(req: BackupPlanRequest): Promise<BackupPlan> {
      try {
        const settings = await repository.ensureDataSource(req.dataSource);
        const points = await repository.listPoints(req.dataSource);
        checkRate(req.dataSource, points);
        const last = points[points.length - 1];
        const tracking = last?.backup.changeTracking ?? {};
        // One session per backup run, whatever the attempt: its id follows from the run.
        const run = Context.current().info.workflowExecution;
        const owner = run ? { workflowId: run.workflowId, runId: run.runId } : undefined;
        const session = await repository.beginSession(req.dataSource, { basePoint: last?.pointId, chunkSize: settings.chunkSize, owner });
        Context.current().heartbeat();
        let kind: TransferKind;
        let reason: string;
        if (!last) {
          kind = 'initial-replica';
          reason = 'no recovery point yet: full read of every disk';
        } else if (req.requestedKind === 'consistency-check') {
          kind = 'consistency-check';
          reason = 'consistency check requested: read everything, send only what differs';
        } else {
          kind = 'express-full';
          reason = `changes since ${last.pointId} from change tracking`;
        }
        const disks = req.disks.map((d) => {
          const baseDisk = last?.disks.find((b) => b.diskId === d.diskId);
          const base = baseDisk && last
            ? { pointId: last.pointId, changeTrackingId: tracking[d.diskId], virtualSize: baseDisk.virtualSize, chunkSize: baseDisk.chunkSize }
            : undefined;
          let diskKind: TransferKind = kind;
          if (kind === 'express-full' && (!base || !base.changeTrackingId || base.virtualSize !== d.virtualSize || base.chunkSize !== settings.chunkSize)) {
            diskKind = 'consistency-check'; // a new or resized disk has no usable tracking base
          }
          return { diskId: d.diskId, chunkSize: settings.chunkSize, kind: diskKind, base };
        });
        // The agent may upload to this session only, only these disks, no larger than the host said.
        const grant = deps.grants.forSession({
          job: Context.current().info.workflowExecution?.workflowId ?? 'unknown-job',
          dataSource: req.dataSource,
          sessionId: session.sessionId,
          basePoint: last?.pointId ?? null,
          disks: req.disks,
        });
        crashPoint('server:after-plan');
        return { kind, reason, sessionId: session.sessionId, grant, server: deps.self, disks };
      } catch (err) {
        return asFailure(err);
      }
    },

    async commitRecoveryPoint(req: CommitRequest): Promise<CommittedPoint> {
      return commit(req);
    },

    async enforceRetention({ dataSource }): Promise<RetentionResult> {
      try {
        const deleted = await repository.enforceRetention(dataSource);
        return { deleted: deleted.map((d) => ({ pointId: d.pointId, reason: d.reason })) };
      } catch (err) {
        deps.metrics?.retentionFailures.inc({ datasource: dataSource });
        Context.current().log.warn('retention failed', { dataSource, error: (err as Error).message });
        return asFailure(err);
      }
    },

    async abortSession({ sessionId }) {
      await repository.abortSession(sessionId).catch((err) => {
        if (err instanceof RepositoryError && err.code === 'NOT_FOUND') return;
        throw err;
      });
    },
  };
  // Every step heartbeats while it runs (see withHeartbeat).
  return Object.fromEntries(
    Object.entries(activities).map(([name, fn]) => [name, (...args: unknown[]) => withHeartbeat(() => (fn as (...a: unknown[]) => Promise<unknown>)(...args))]),
  ) as unknown as ServerActivities;

  /**
   * A point's time comes from this server's clock: the checkpoint's time as the host reported it
   * when it lies between the session's start and now (both this server's clock), else now. A host
   * (or anyone who can start an activity) cannot date a point in 9999 or 1970 and so steer
   * retention, "latest" or `delete --oldest`.
   */
  async function pointTime(sessionId: string, reported: string | undefined): Promise<string> {
    const now = Date.now();
    const started = Date.parse((await repository.getSession(sessionId).catch(asFailure)).startedAt);
    const t = reported === undefined ? NaN : Date.parse(reported);
    return new Date(Number.isFinite(t) && t >= started - 60_000 && t <= now ? t : now).toISOString();
  }

  async function commit(req: CommitRequest): Promise<CommittedPoint> {
    {
      // A retry after a lost reply finds its point already there: return it.
      const existing = (await repository.listPoints(req.dataSource).catch(asFailure)).find(
        (p) => p.backup.workflowId === req.workflowId,
      );
      const toResult = (p: RecoveryPointManifest): CommittedPoint => ({ pointId: p.pointId, createdAt: p.createdAt, storedBytes: p.ownedBytes });
      if (existing) return toResult(existing);
      checkRate(req.dataSource, await repository.listPoints(req.dataSource).catch(asFailure));
      // The lab's guest write counter is a fact of the test world, not of the VM's configuration.
      const { guestWriteSeq, ...vm } = req.vm;
      try {
        crashPoint('server:before-commit');
        const createdAt = await pointTime(req.sessionId, req.checkpointCreatedAt);
        const point = await repository.commitPoint(req.sessionId, {
          kind: req.kind,
          mode: req.mode,
          createdAt,
          disks: req.disks.map((d) => ({ diskId: d.diskId, fileName: d.fileName, virtualSize: d.virtualSize })),
          backup: {
            workflowId: req.workflowId,
            changeTracking: Object.fromEntries(req.disks.map((d) => [d.diskId, d.changeTrackingId])),
            modeReasons: req.modeReasons,
            ...(req.downtimeMs !== undefined ? { downtimeMs: req.downtimeMs } : {}),
            ...(req.consistency !== undefined ? { consistency: req.consistency } : {}),
            transfer: req.disks.map((d) => ({
              diskId: d.diskId,
              kind: d.kind,
              ...(d.fallbackReason !== undefined ? { fallbackReason: d.fallbackReason } : {}),
              bytesRead: d.bytesRead,
              bytesSent: d.bytesSent,
              changedChunks: d.changedChunks,
              durationMs: d.durationMs,
            })),
          },
          vm,
          annotations: guestWriteSeq !== undefined ? { guestWriteSeq } : {},
        });
        crashPoint('server:after-commit');
        const m = deps.metrics;
        if (m) {
          m.recoveryPoints.inc({ datasource: req.dataSource, kind: req.kind, mode: req.mode });
          const labels = { datasource: req.dataSource, host: req.vm.host };
          m.bytesRead.inc(labels, req.disks.reduce((s, d) => s + d.bytesRead, 0));
          m.bytesSent.inc(labels, req.disks.reduce((s, d) => s + d.bytesSent, 0));
          if (req.startedAt) m.backupDuration.observe({ kind: req.kind, mode: req.mode }, (Date.now() - Date.parse(req.startedAt)) / 1000);
          if (req.downtimeMs !== undefined) m.offlineDowntime.observe({ datasource: req.dataSource }, req.downtimeMs / 1000);
        }
        return toResult(point);
      } catch (err) {
        return asFailure(err);
      }
    }
  }
}
