// Server side of a restore: a lease that keeps the point from eviction while it is read.
import { ApplicationFailure, Context } from '@temporalio/activity';
import { RepositoryError, type Repository } from '../../repository';
import type { GrantAuthority } from '../../storage-api/grants';
import type { ServerEndpoint } from '../host/types';

export interface RestoreLeaseResult {
  /** This server, for the agent that reads the point. */
  server: ServerEndpoint;
  leaseId: string;
  /** The agent's grant to read this point, and only it, while the lease lasts. */
  grant: string;
  pointId: string;
  createdAt: string;
  kind: string;
  disks: { diskId: string; virtualSize: number; chunkSize: number; fileName: string }[];
  vm: { vmId?: string; name?: string; host?: string; config?: unknown };
}

/** A recovery point as `rp list` shows it, with the server whose repository holds it. */
export interface RecoveryPointSummary {
  server: string;
  pointId: string;
  createdAt: string;
  kind: string;
  mode: string;
  disks: number;
  virtualSize: number;
  storedBytes: number;
}

export interface RestoreServerActivities {
  /** This server's recovery points of a data source, oldest first (none when it keeps no chain of it). */
  listRecoveryPoints(req: { dataSource: string }): Promise<RecoveryPointSummary[]>;
  beginRestoreLease(req: { dataSource: string; pointId?: string }): Promise<RestoreLeaseResult>;
  endRestoreLease(req: { leaseId: string }): Promise<void>;
}

export function createRestoreServerActivities(deps: { repository: Repository; grants: GrantAuthority; self: ServerEndpoint }): RestoreServerActivities {
  const { repository } = deps;
  return {
    async listRecoveryPoints({ dataSource }) {
      const points = await repository.listPoints(dataSource).catch((err) => {
        if (err instanceof RepositoryError && err.code === 'NOT_FOUND') return [];
        throw err;
      });
      return points.map((p) => ({
        server: deps.self.id,
        pointId: p.pointId,
        createdAt: p.createdAt,
        kind: p.kind,
        mode: p.mode,
        disks: p.disks.length,
        virtualSize: p.disks.reduce((s, d) => s + d.virtualSize, 0),
        storedBytes: p.ownedBytes,
      }));
    },
    async beginRestoreLease({ dataSource, pointId }) {
      try {
        const points = await repository.listPoints(dataSource);
        const point = pointId ? points.find((p) => p.pointId === pointId) : points[points.length - 1];
        if (!point) {
          throw ApplicationFailure.nonRetryable(
            pointId
              ? `no recovery point ${pointId} of ${dataSource}; \`hvprotect rp list ${dataSource}\` lists them`
              : `${dataSource} has no recovery point yet`,
            'UnknownRecoveryPoint',
          );
        }
        const lease = await repository.beginRestore(dataSource, point.pointId);
        const { vm } = point;
        return {
          server: deps.self,
          leaseId: lease.leaseId,
          grant: deps.grants.forRestore({ job: Context.current().info.workflowExecution?.workflowId ?? 'unknown-job', dataSource, pointId: point.pointId, leaseId: lease.leaseId, expiresAt: lease.expiresAt }),
          pointId: point.pointId,
          createdAt: point.createdAt,
          kind: point.kind,
          disks: point.disks.map((d) => ({ diskId: d.diskId, virtualSize: d.virtualSize, chunkSize: d.chunkSize, fileName: d.fileName })),
          vm: { vmId: vm.vmId, name: vm.name, host: vm.host, config: vm.config },
        };
      } catch (err) {
        if (err instanceof RepositoryError && err.code === 'NOT_FOUND') {
          throw ApplicationFailure.nonRetryable(`${err.message}${err.hint ? `: ${err.hint}` : ''}`, 'UnknownDataSource');
        }
        throw err;
      }
    },
    async endRestoreLease({ leaseId }) {
      await repository.endRestore(leaseId).catch(() => undefined);
    },
  };
}
