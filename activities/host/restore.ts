// Restore on a host: a recovery point's disks read through recovery's verified reader over the
// storage API (every chunk checked against the index digests, fetch overlapped with the write)
// and written as VHDX or raw (sparse: zero chunks are not written); then, for a whole-VM
// restore, register the VM on this host, off.
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure, Context } from '@temporalio/activity';
import type { HypervisorAdapter, VmFacts } from '../../hypervisor/types';
import type { StorageClient } from '../../storage-api/client';
import { PointDiskReader, openDiskWriter, restorePointDisk, storageApiChunkSource } from '../../recovery';
import { toFailure } from './index';

export interface RestoreDisksRequest {
  dataSource: string;
  pointId: string;
  disks: { diskId: string; virtualSize: number; chunkSize: number; fileName: string }[];
  /** Folder on this host; undefined = a staging folder for a VM import. */
  targetDir?: string;
  format: 'vhdx' | 'raw';
  /** Names the staging folder. */
  restoreId: string;
}

export interface RestoredDisk {
  diskId: string;
  path: string;
  bytesWritten: number;
  chunksVerified: number;
}

export interface ImportVmRequest {
  config: unknown;
  disks: { diskId: string; path: string }[];
  vmId?: string;
  name?: string;
  replace: boolean;
}

export interface RestoreHostActivities {
  restoreDisks(req: RestoreDisksRequest): Promise<RestoredDisk[]>;
  importRestoredVm(req: ImportVmRequest): Promise<VmFacts>;
  checkVmOff(vm: string): Promise<{ exists: boolean; state?: string }>;
}

/** A restored file name: the backed-up name's last component, nothing a path can escape with. */
export function safeFileName(name: string, diskId: string, format: 'vhdx' | 'raw'): string {
  const base = (name.split(/[\\/]/).pop() ?? '').replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '');
  const stem = base ? base.replace(/\.(a?vhdx|vhd|raw|img)$/i, '') : diskId;
  return `${stem || diskId}.${format === 'vhdx' ? 'vhdx' : 'raw'}`;
}

export function createRestoreHostActivities(deps: { adapter: HypervisorAdapter; storage: StorageClient }): RestoreHostActivities {
  const { adapter, storage } = deps;
  return {
    async checkVmOff(vm) {
      try {
        const f = await adapter.inspectVm(vm);
        return { exists: true, state: f.state };
      } catch (err) {
        const t = (err as { type?: string }).type;
        if (t === 'VmNotFound' || t === 'VmNotOnHost') return { exists: false };
        return toFailure(err);
      }
    },

    async restoreDisks(req) {
      const ctx = Context.current();
      const resume = ctx.info.heartbeatDetails as { disk: number; slot: number } | undefined;
      const dir = req.targetDir ?? path.join(os.tmpdir(), 'hvprotect-restore', req.restoreId.replace(/[^A-Za-z0-9._-]/g, '_'));
      await fsp.mkdir(dir, { recursive: true });
      const out: RestoredDisk[] = [];
      try {
        for (let di = 0; di < req.disks.length; di++) {
          const d = req.disks[di];
          const file = path.join(dir, safeFileName(d.fileName, d.diskId, req.format));
          const resuming = !!resume && resume.disk === di;
          const startSlot = resume && resume.disk === di ? resume.slot : 0;
          if (resume && di < resume.disk) {
            out.push({ diskId: d.diskId, path: file, bytesWritten: 0, chunksVerified: 0 });
            continue;
          }
          const reader = await PointDiskReader.open(storageApiChunkSource(storage, { dataSource: req.dataSource, pointId: req.pointId }, d.diskId));
          if (reader.virtualSize !== d.virtualSize) {
            throw ApplicationFailure.nonRetryable(`index of disk ${d.diskId} says ${reader.virtualSize} bytes, manifest ${d.virtualSize}`, 'RecoveryPointDamaged');
          }
          const writer = await openDiskWriter(file, req.format, d.virtualSize, resuming);
          let done;
          try {
            done = await restorePointDisk(reader, writer, { fromSlot: startSlot, onProgress: (p) => ctx.heartbeat({ disk: di, slot: p.nextSlot }) });
          } finally {
            await writer.close();
          }
          out.push({ diskId: d.diskId, path: file, bytesWritten: done.bytesWritten, chunksVerified: done.chunksVerified });
        }
        return out;
      } catch (err) {
        return toFailure(err);
      }
    },

    async importRestoredVm(req) {
      if (!adapter.importVm) {
        throw ApplicationFailure.nonRetryable(
          `host ${adapter.hostName} cannot register restored VMs with this hypervisor adapter: restore the disks to a folder (--to DIR) and import them`,
          'RestoreNotSupported',
        );
      }
      try {
        return await adapter.importVm({ config: req.config, disks: req.disks, vmId: req.vmId, name: req.name, replace: req.replace });
      } catch (err) {
        return toFailure(err);
      }
    },
  };
}
