// A running backup's progress as the CLI shows it: the workflow's `progress` query (step, mode,
// kind, finished disks) with each running transfer's position read from its pending activity's
// heartbeat (`describe`). Transfers never signal the workflow, so a backup's history does not grow
// with the time its disks take.
import type { WorkflowHandle } from '@temporalio/client';
import { decodeFromPayloadsAtIndex } from '@temporalio/common/lib/internal-non-workflow';
import { backupProgressQuery, type BackupProgress } from '../workflows/backup-progress';
import type { TransferHeartbeat } from '../activities/host/types';

export async function readBackupProgress(handle: WorkflowHandle): Promise<BackupProgress> {
  const [progress, described] = await Promise.all([handle.query(backupProgressQuery), handle.describe()]);
  for (const a of described.raw.pendingActivities ?? []) {
    if (a.activityType?.name !== 'transferDisk' || !a.heartbeatDetails?.payloads?.length) continue;
    const hb = await decodeFromPayloadsAtIndex<TransferHeartbeat>(handle.client.options.loadedDataConverter, 0, a.heartbeatDetails.payloads).catch(() => undefined);
    const disk = hb && progress.disks.find((d) => d.diskId === hb.diskId);
    // A disk already done keeps its result; a heartbeat behind what the workflow knows is older.
    if (!hb || !disk || disk.done || hb.position < disk.position) continue;
    Object.assign(disk, { position: hb.position, bytesRead: hb.bytesRead, bytesSent: hb.bytesSent });
  }
  progress.bytesRead = progress.disks.reduce((s, d) => s + d.bytesRead, 0);
  progress.bytesSent = progress.disks.reduce((s, d) => s + d.bytesSent, 0);
  const elapsed = progress.transferStartedAt ? (Date.now() - progress.transferStartedAt) / 1000 : 0;
  progress.rate = elapsed > 0 ? Math.round(progress.bytesRead / elapsed) : 0;
  return progress;
}
