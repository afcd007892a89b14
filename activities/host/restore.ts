// Restore on a host: fetch a recovery point's disks from the storage API, check every chunk
// against the point's index digests, and write them as VHDX (sparse: zero chunks are not
// written) or raw; then, for a whole-VM restore, register the VM on this host, off.
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure, Context } from '@temporalio/activity';
import type { HypervisorAdapter, VmFacts } from '../../hypervisor/types';
import type { StorageClient } from '../../storage-api/client';
import { createDynamicVhdx, openVhdx } from '../../vhdx';
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

const DIGEST = 32;

/** A restored file name: the backed-up name's last component, nothing a path can escape with. */
export function safeFileName(name: string, diskId: string, format: 'vhdx' | 'raw'): string {
  const base = (name.split(/[\\/]/).pop() ?? '').replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '');
  const stem = base ? base.replace(/\.(a?vhdx|vhd|raw|img)$/i, '') : diskId;
  return `${stem || diskId}.${format === 'vhdx' ? 'vhdx' : 'raw'}`;
}

interface DiskWriter {
  write(offset: number, data: Buffer): Promise<void>;
  close(): Promise<void>;
}

async function openWriter(file: string, format: 'vhdx' | 'raw', virtualSize: number, resuming: boolean): Promise<DiskWriter> {
  if (format === 'raw') {
    const fh = await fsp.open(file, resuming ? 'r+' : 'w');
    await fh.truncate(virtualSize); // sparse: unwritten (zero) chunks take no space
    return {
      write: async (offset, data) => {
        await fh.write(data, 0, data.length, offset);
      },
      close: async () => {
        await fh.sync();
        await fh.close();
      },
    };
  }
  if (!resuming) {
    await fsp.rm(file, { force: true });
    await createDynamicVhdx(file, { virtualSize });
  }
  const disk = await openVhdx(file, { writable: true });
  return {
    write: (offset, data) => disk.write(offset, data),
    close: async () => {
      await disk.flush();
      await disk.close();
    },
  };
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
          const index = await storage.getIndex({ dataSource: req.dataSource, pointId: req.pointId }, d.diskId);
          if (index.virtualSize !== d.virtualSize) {
            throw ApplicationFailure.nonRetryable(`index of disk ${d.diskId} says ${index.virtualSize} bytes, manifest ${d.virtualSize}`, 'RecoveryPointDamaged');
          }
          const writer = await openWriter(file, req.format, d.virtualSize, resuming);
          let bytesWritten = 0;
          let verified = 0;
          try {
            const slots = index.count;
            const BATCH = 64;
            for (let s0 = startSlot; s0 < slots; s0 += BATCH) {
              const batch: number[] = [];
              for (let s = s0; s < Math.min(slots, s0 + BATCH); s++) {
                const dg = index.slots.subarray(s * DIGEST, (s + 1) * DIGEST);
                if (!dg.equals(Buffer.alloc(DIGEST))) batch.push(s);
              }
              // Fetch in parallel, write in order.
              const chunks = await Promise.all(
                batch.map(async (s) => {
                  const digest = index.slots.subarray(s * DIGEST, (s + 1) * DIGEST).toString('hex');
                  const data = await storage.getChunk(digest);
                  if (createHash('sha256').update(data).digest('hex') !== digest) {
                    throw ApplicationFailure.nonRetryable(
                      `chunk ${digest} of disk ${d.diskId} (offset ${s * index.chunkSize}) does not match its digest: ` +
                        'the repository is damaged; run `hvprotect verify --read-data` and restore an older point',
                      'RecoveryPointDamaged',
                    );
                  }
                  const expected = Math.min(index.chunkSize, d.virtualSize - s * index.chunkSize);
                  if (data.length !== expected) {
                    throw ApplicationFailure.nonRetryable(`chunk ${digest} is ${data.length} bytes, slot needs ${expected}`, 'RecoveryPointDamaged');
                  }
                  return { s, data };
                }),
              );
              for (const { s, data } of chunks) {
                await writer.write(s * index.chunkSize, data);
                bytesWritten += data.length;
                verified++;
              }
              ctx.heartbeat({ disk: di, slot: Math.min(slots, s0 + BATCH) });
            }
          } finally {
            await writer.close();
          }
          out.push({ diskId: d.diskId, path: file, bytesWritten, chunksVerified: verified });
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
