// Restore on a host: a recovery point's disks read through recovery's verified reader over the
// storage API (every chunk checked against the index digests, fetch overlapped with the write)
// and written as VHDX or raw (sparse: zero chunks are not written); then, for a whole-VM
// restore, register the VM on this host, off.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ApplicationFailure, Context } from '@temporalio/activity';
import type { HypervisorAdapter, VmFacts } from '../../hypervisor/types';
import type { StorageClient } from '../../storage-api/client';
import { PointDiskReader, openDiskWriter, restorePointDisk, storageApiChunkSource } from '../../recovery';
import type { ServerEndpoint } from './types';
import { toFailure } from './index';
import { createRestoreTargetPolicy } from './restore-target';

export interface RestoreDisksRequest {
  /** The server whose repository holds the point. */
  server: ServerEndpoint;
  /** The server's grant to read this point (storage-api/grants.ts). */
  grant: string;
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

/** Where a disk is written until it is complete; the name carries the restore, so a retry of it reopens its own file. */
function partialName(file: string, restoreId: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${restoreId.replace(/[^A-Za-z0-9_-]/g, '_')}.partial`);
}

async function exists(p: string): Promise<boolean> {
  return fsp.lstat(p).then(() => true, () => false);
}

/** `restoreRoots`: folders exports may go under (see restore-target.ts). */
export function createRestoreHostActivities(deps: { adapter: HypervisorAdapter; storageFor: (server: ServerEndpoint) => StorageClient; restoreRoots: string[] }): RestoreHostActivities {
  const { adapter } = deps;
  const targets = createRestoreTargetPolicy({ adapter, roots: deps.restoreRoots });
  const checkVmOff = async (vm: string): Promise<{ exists: boolean; state?: string }> => {
    try {
      const f = await adapter.inspectVm(vm);
      return { exists: true, state: f.state };
    } catch (err) {
      const t = (err as { type?: string }).type;
      if (t === 'VmNotFound' || t === 'VmNotOnHost') return { exists: false };
      return toFailure(err);
    }
  };
  return {
    checkVmOff,

    async restoreDisks(req) {
      const ctx = Context.current();
      const resume = ctx.info.heartbeatDetails as { disk: number; slot: number } | undefined;
      const storage = deps.storageFor(req.server).withGrant(String(req.grant));
      const out: RestoredDisk[] = [];
      try {
        const dir = req.targetDir === undefined ? await targets.stagingDir(String(req.restoreId)) : await targets.exportDir(req.targetDir);
        const files = req.disks.map((d) => path.join(dir, safeFileName(d.fileName, d.diskId, req.format)));
        if (new Set(files).size !== files.length) throw ApplicationFailure.nonRetryable(`two disks of the point would be written to the same file in ${dir}`, 'RestoreTargetRefused');
        for (let di = resume?.disk ?? 0; di < files.length; di++) {
          if (await exists(files[di])) {
            throw ApplicationFailure.nonRetryable(`${files[di]} exists already: a restore never writes over a file; choose another folder or move it away`, 'RestoreTargetRefused');
          }
        }
        for (let di = 0; di < req.disks.length; di++) {
          const d = req.disks[di];
          const file = files[di];
          const partial = partialName(file, String(req.restoreId));
          const resuming = !!resume && resume.disk === di && (await exists(partial));
          const startSlot = resuming ? resume!.slot : 0;
          if (resume && di < resume.disk) {
            out.push({ diskId: d.diskId, path: file, bytesWritten: 0, chunksVerified: 0 });
            continue;
          }
          // Left by an attempt of this restore that died before its first heartbeat.
          if (!resuming) await fsp.rm(partial, { force: true });
          const reader = await PointDiskReader.open(storageApiChunkSource(storage, { dataSource: req.dataSource, pointId: req.pointId }, d.diskId));
          if (reader.virtualSize !== d.virtualSize) {
            throw ApplicationFailure.nonRetryable(`index of disk ${d.diskId} says ${reader.virtualSize} bytes, manifest ${d.virtualSize}`, 'RecoveryPointDamaged');
          }
          const writer = await openDiskWriter(partial, req.format, d.virtualSize, resuming);
          let done;
          try {
            done = await restorePointDisk(reader, writer, { fromSlot: startSlot, onProgress: (p) => ctx.heartbeat({ disk: di, slot: p.nextSlot }) });
          } finally {
            await writer.close();
          }
          // link, not rename: it fails when a file appeared under the name meanwhile.
          try {
            await fsp.link(partial, file);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
              throw ApplicationFailure.nonRetryable(`${file} exists already: a restore never writes over a file (the restored copy is ${partial})`, 'RestoreTargetRefused');
            }
            throw err;
          }
          await fsp.unlink(partial);
          ctx.heartbeat({ disk: di + 1, slot: 0 });
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
        await targets.checkImportDisks((Array.isArray(req.disks) ? req.disks : []).map((d) => d?.path));
        if (req.replace) {
          // The workflow checked too, but anyone who can reach Temporal could skip the workflow.
          const vmId = req.vmId ?? (req.config as { vmId?: unknown } | null)?.vmId;
          if (typeof vmId !== 'string') throw ApplicationFailure.nonRetryable('a restore over a VM needs its id', 'InvalidInput');
          const off = await checkVmOff(vmId);
          if (off.exists && off.state !== 'off') {
            throw ApplicationFailure.nonRetryable(`VM ${vmId} is ${off.state} on ${adapter.hostName}: turn it off before restoring over it`, 'VmNotOff');
          }
        }
        return await adapter.importVm({ config: req.config, disks: req.disks, vmId: req.vmId, name: req.name, replace: req.replace });
      } catch (err) {
        return toFailure(err);
      }
    },
  };
}
