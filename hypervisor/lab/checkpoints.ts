// Backup checkpoints of a lab VM: a real AVHDX differencing disk per disk that takes the guest's
// writes while the backup reads the frozen parent; release merges it back. Change tracking is read
// between two points of a disk's log (change-tracking.ts).
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { HypervisorError, type BackupCheckpoint, type BackupMode, type ChangedRanges, type DiskReader, type OfflineMethod } from '../types';
import { changesBetween, currentTrackingPoint, formatTrackingId, parseTrackingId } from './change-tracking';
import type { CheckpointRecord, LabState, VmRecord } from './state';
import { crashPoint } from '../../faults/crash-point';
import { exists, failed, type LabStore } from './store';
import * as vhdx from './vhdx-io';

export async function createBackupCheckpoint(
  lab: LabStore,
  host: string,
  vm: string,
  opts: { mode: BackupMode; offlineMethod?: OfflineMethod | 'none'; label?: string },
): Promise<BackupCheckpoint> {
  if (!opts || (opts.mode !== 'online' && opts.mode !== 'offline')) throw failed(`bad backup mode ${JSON.stringify(opts?.mode)}`);
  // undefined or 'none': leave the VM as it is (it is off, saved, paused or a replica).
  const method = opts.offlineMethod ?? 'none';
  if (method !== 'save' && method !== 'pause' && method !== 'none') throw failed(`bad offline method ${JSON.stringify(method)}`);
  return lab.mutate('createBackupCheckpoint', async (s) => {
    const rec = lab.findVmOnHost(s, vm, host);
    let ck: CheckpointRecord;
    let quietSince: number | undefined;
    if (rec.checkpoint) {
      const prior = rec.checkpoint;
      if (opts.label === undefined || prior.label !== opts.label) {
        throw failed(`VM ${rec.name} already has backup checkpoint ${prior.checkpointId}; release it first`, {
          vmId: rec.vmId,
          checkpointId: prior.checkpointId,
        });
      }
      if (!prior.pending) {
        // A retry of a request that made its checkpoint: the same one, and a VM it quieted runs again.
        if (prior.resumeTo) resumeQuieted(rec, prior);
        return backupCheckpoint(lab, rec, prior);
      }
      // The first attempt stopped between quiescing the VM and recording the disks: finish its work.
      ck = prior;
      await removeUnrecordedChildren(lab, rec, ck);
      ck.disks = [];
    } else {
      const pt = rec.disks.find((d) => d.passthrough);
      if (pt) {
        throw failed(`VM ${rec.name} has passthrough disk ${pt.diskId}: a checkpoint cannot include it; protect the VM at guest level`, {
          vmId: rec.vmId,
          diskId: pt.diskId,
        });
      }
      ck = {
        checkpointId: randomUUID(),
        createdAt: new Date().toISOString(),
        mode: opts.mode,
        ...(opts.label !== undefined ? { label: String(opts.label) } : {}),
        disks: [],
      };
      if (opts.mode === 'offline' && method !== 'none' && rec.state === 'running') {
        quietSince = performance.now();
        rec.state = method === 'save' ? 'saved' : 'paused';
        ck.resumeTo = 'running';
        ck.pending = true;
        ck.quiescedAt = new Date().toISOString();
        rec.checkpoint = ck;
        await lab.persist(s); // a crash from here on leaves a record of the VM we quieted
        crashPoint('lab:checkpoint-quiesced');
      }
    }
    try {
      for (const d of rec.disks) {
        const folder = lab.paths.diskFolder(rec, d);
        const frozenFile = d.chain.length ? d.chain[d.chain.length - 1] : d.fileName;
        const childFile = childFileName(d.diskId, ck.checkpointId);
        const point = await currentTrackingPoint(lab.paths.trackingLog(rec, d));
        await vhdx.createChild(path.join(folder, childFile), path.join(folder, frozenFile));
        d.chain.push(childFile);
        d.generation += 1;
        ck.disks.push({ diskId: d.diskId, frozenFile, childFile, changeTrackingId: formatTrackingId(point), virtualSize: d.virtualSize });
      }
    } catch (e) {
      // Undo: no half checkpoint, and a VM quieted for it runs again.
      for (const c of ck.disks) {
        const d = lab.disk(rec, c.diskId);
        d.chain.pop();
        d.generation += 1;
        await fsp.rm(path.join(lab.paths.diskFolder(rec, d), c.childFile), { force: true });
      }
      if (ck.resumeTo && (rec.state === 'saved' || rec.state === 'paused')) rec.state = ck.resumeTo;
      delete rec.checkpoint;
      await lab.persist(s);
      throw failed(`cannot create a backup checkpoint of VM ${rec.name}: ${(e as Error).message}`, { vmId: rec.vmId });
    }
    if (rec.writeLoad) ck.guestWriteSeq = rec.writeLoad.writes;
    delete ck.pending;
    rec.checkpoint = ck;
    if (ck.resumeTo) {
      await lab.persist(s); // the differencing disks exist before the VM runs again
      resumeQuieted(rec, ck, quietSince);
    } else if (opts.mode === 'offline' && ck.downtimeMs === undefined) {
      ck.downtimeMs = 0;
    }
    return backupCheckpoint(lab, rec, ck);
  });
}

function childFileName(diskId: string, checkpointId: string): string {
  return `${diskId}-${checkpointId.slice(0, 8)}.avhdx`;
}

/** The VM a checkpoint quieted runs again (only if it is still quiet: an administrator may have acted). */
function resumeQuieted(rec: VmRecord, ck: CheckpointRecord, quietSince?: number): void {
  if (rec.state === 'saved' || rec.state === 'paused') rec.state = ck.resumeTo!;
  ck.downtimeMs =
    quietSince !== undefined
      ? Math.max(0, Math.round((performance.now() - quietSince) * 1000) / 1000)
      : Math.max(0, Date.now() - Date.parse(ck.quiescedAt ?? ck.createdAt));
  delete ck.resumeTo;
  delete ck.quiescedAt;
}

/** Differencing disks an interrupted attempt made but did not record (the chain does not name them). */
async function removeUnrecordedChildren(lab: LabStore, rec: VmRecord, ck: CheckpointRecord): Promise<void> {
  for (const d of rec.disks) {
    const childFile = childFileName(d.diskId, ck.checkpointId);
    if (!d.chain.includes(childFile)) await fsp.rm(path.join(lab.paths.diskFolder(rec, d), childFile), { force: true });
  }
}

export function backupCheckpoint(lab: LabStore, rec: VmRecord, ck: CheckpointRecord): BackupCheckpoint {
  return {
    checkpointId: ck.checkpointId,
    vmId: rec.vmId,
    host: rec.host,
    mode: ck.mode,
    createdAt: ck.createdAt,
    disks: ck.disks.map((c) => {
      const d = lab.disk(rec, c.diskId);
      return { diskId: c.diskId, frozenPath: path.join(lab.paths.diskFolder(rec, d), c.frozenFile), virtualSize: c.virtualSize, changeTrackingId: c.changeTrackingId };
    }),
    ...(ck.downtimeMs !== undefined ? { downtimeMs: ck.downtimeMs } : {}),
    // The lab's guest has no writers: an online checkpoint stands for VSS having succeeded.
    consistency: { achieved: ck.mode === 'online' ? ('application-consistent' as const) : ('crash-consistent' as const) },
    ...(ck.guestWriteSeq !== undefined ? { guestWriteSeq: ck.guestWriteSeq } : {}),
  };
}

/** The checkpoint of a VM on `host` (or on a file server holding the disk's share). */
function checkpointFor(lab: LabStore, s: LabState, host: string, vm: string, checkpointId: unknown, diskId?: string): { rec: VmRecord; ck: CheckpointRecord } {
  let rec: VmRecord;
  try {
    rec = lab.findVmOnHost(s, vm, host);
  } catch (e) {
    // The agent of a file server reads the disks on its shares, wherever the VM runs.
    const other = e instanceof HypervisorError && e.type === 'VmNotOnHost' ? lab.findVm(s, vm) : undefined;
    const d = other?.disks.find((x) => x.diskId === diskId);
    if (!other || !d || d.location.kind !== 'smb' || d.location.fileServer !== host) throw e;
    rec = other;
  }
  const ck = rec.checkpoint;
  if (!ck || typeof checkpointId !== 'string' || ck.checkpointId !== checkpointId) {
    const shown = typeof checkpointId === 'string' ? checkpointId.slice(0, 100) : String(checkpointId);
    throw new HypervisorError('CheckpointNotFound', `VM ${rec.name} (${rec.vmId}) has no backup checkpoint ${JSON.stringify(shown)}`, {
      vmId: rec.vmId,
      checkpointId: shown,
    });
  }
  return { rec, ck };
}

export async function releaseCheckpoint(lab: LabStore, host: string, vm: string, checkpointId: string): Promise<void> {
  await lab.mutate('releaseCheckpoint', async (s) => {
    const rec = lab.findVmOnHost(s, vm, host);
    const ck = rec.checkpoint;
    if (!ck || ck.checkpointId !== checkpointId) return; // already released
    if (ck.pending) await removeUnrecordedChildren(lab, rec, ck);
    for (const c of ck.disks) {
      const d = lab.disk(rec, c.diskId);
      const folder = lab.paths.diskFolder(rec, d);
      const child = path.join(folder, c.childFile);
      if (d.chain[d.chain.length - 1] === c.childFile) {
        if (await exists(child)) await vhdx.mergeChild(child);
        d.chain.pop();
        d.generation += 1;
        await lab.persist(s); // the chain no longer names the child before the child goes
      }
      await fsp.rm(child, { force: true });
      d.referenceTrackingId = c.changeTrackingId;
    }
    if (ck.resumeTo && (rec.state === 'saved' || rec.state === 'paused')) rec.state = ck.resumeTo;
    delete rec.checkpoint;
  });
}

/** Release every backup checkpoint of the VM carrying `label`; returns their ids. */
export async function releaseCheckpointsByLabel(lab: LabStore, host: string, vm: string, label: string): Promise<string[]> {
  return lab.locked('releaseCheckpointsByLabel', async (s) => {
    const ck = lab.findVmOnHost(s, vm, host).checkpoint;
    if (!ck || typeof label !== 'string' || ck.label !== label) return [];
    await releaseCheckpoint(lab, host, vm, ck.checkpointId); // re-entrant: same lock, rereads lab.json
    return [ck.checkpointId];
  });
}

export async function changedRanges(lab: LabStore, host: string, vm: string, checkpointId: string, diskId: string, sinceId: string): Promise<ChangedRanges> {
  return lab.locked('changedRanges', (s) => changedRangesIn(lab, s, host, vm, checkpointId, diskId, sinceId));
}

async function changedRangesIn(lab: LabStore, s: LabState, host: string, vm: string, checkpointId: string, diskId: string, sinceId: string): Promise<ChangedRanges> {
  const { rec, ck } = checkpointFor(lab, s, host, vm, checkpointId, diskId);
  const d = lab.disk(rec, diskId);
  const c = ck.disks.find((x) => x.diskId === diskId);
  if (!c) throw failed(`backup checkpoint ${checkpointId} does not include disk ${diskId}`, { vmId: rec.vmId, diskId });
  const since = parseTrackingId(sinceId);
  if (!since) {
    const shown = typeof sinceId === 'string' ? sinceId.slice(0, 100) : String(sinceId);
    return { tracked: false, ranges: [], reason: `unknown change-tracking id ${JSON.stringify(shown)} (expected rct:<epoch>:<seq>)` };
  }
  const until = parseTrackingId(c.changeTrackingId)!;
  const r = await changesBetween(lab.paths.trackingLog(rec, d), since, until);
  return r.tracked ? { tracked: true, ranges: r.ranges } : { tracked: false, ranges: [], reason: r.reason };
}

export async function openCheckpointDisk(lab: LabStore, host: string, vm: string, checkpointId: string, diskId: string): Promise<DiskReader> {
  return lab.locked('openCheckpointDisk', (s) => openCheckpointDiskIn(lab, s, host, vm, checkpointId, diskId));
}

async function openCheckpointDiskIn(lab: LabStore, s: LabState, host: string, vm: string, checkpointId: string, diskId: string): Promise<DiskReader> {
  const { rec, ck } = checkpointFor(lab, s, host, vm, checkpointId, diskId);
  const c = ck.disks.find((x) => x.diskId === diskId);
  if (!c) throw failed(`backup checkpoint ${checkpointId} of VM ${rec.name} has no disk ${JSON.stringify(String(diskId).slice(0, 100))}`, { vmId: rec.vmId, diskId });
  const d = lab.disk(rec, diskId);
  return vhdx.openDiskReader(path.join(lab.paths.diskFolder(rec, d), c.frozenFile));
}
