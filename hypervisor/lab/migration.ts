// VMs moving: live migration (within a cluster or outside it), Hyper-V Replica, deletion, and import
// of a restored VM from its backed-up configuration.
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { VmFacts } from '../types';
import { resetTrackingLog } from './change-tracking';
import { isSafeName, trackingLogName, type DiskLocation, type DiskRecord, type VmRecord } from './state';
import { LabError, exists, failed, moveFile, type LabStore } from './store';
import { facts, parseConfig, resolveStorage, type StorageSpec } from './vm-config';
import * as vhdx from './vhdx-io';

export interface LabImportOptions {
  host: string;
  /** VmFacts.config of the VM as it was backed up. */
  config: unknown;
  /** The restored disk files (VHDX), one per disk of the config; moved into place (copied with `copy`). */
  disks: { diskId: string; path: string }[];
  /** Default: the config's vmId. */
  vmId?: string;
  name?: string;
  /** Default: where the config had it, if the host can reach it; else the host's local folder. */
  storage?: StorageSpec;
  /** Restore to the original place: replace the existing VM of that id (it must be off). */
  replace?: boolean;
  copy?: boolean;
}

export interface MigrationResult {
  vmId: string;
  from: string;
  to: string;
  withinCluster: boolean;
  /** Files moved (new paths). */
  moved: string[];
  trackingLost: boolean;
}

/**
 * Live-migrate a VM. Within a cluster (both hosts nodes of one cluster) ownership moves, CSV and
 * SMB storage stay and change tracking survives. Outside, local and CSV storage moves to the new
 * host's folder, the VM leaves its cluster role and change tracking starts a new epoch (lost).
 * A backup checkpoint's AVHDX moves with its disk.
 */
export async function migrateVm(lab: LabStore, vm: string, toHost: string): Promise<MigrationResult> {
  return lab.mutate('migrateVm', async (s) => {
    const rec = lab.findVm(s, vm);
    if (!isSafeName(toHost) || !s.hosts[toHost]) throw new LabError(`no lab host ${JSON.stringify(toHost)}`);
    const from = rec.host;
    const fromCluster = s.hosts[from]?.cluster;
    const withinCluster = fromCluster !== undefined && fromCluster === s.hosts[toHost].cluster;
    const result: MigrationResult = { vmId: rec.vmId, from, to: toHost, withinCluster, moved: [], trackingLost: false };
    if (from === toHost) return result;

    const after: VmRecord = structuredClone(rec);
    after.host = toHost;
    if (!withinCluster) {
      delete after.clustered;
      for (const d of after.disks) if (d.location.kind !== 'smb') d.location = { kind: 'local' };
      if (after.configLocation.kind !== 'smb') after.configLocation = { kind: 'local' };
    }
    // Move the files whose folder changes (all of a disk's files: base, AVHDX chain, tracking log).
    const moves: [string, string][] = [];
    for (let i = 0; i < rec.disks.length; i++) {
      const a = lab.paths.diskFolder(rec, rec.disks[i]);
      const b = lab.paths.diskFolder(after, after.disks[i]);
      if (a === b) continue;
      const d = rec.disks[i];
      for (const f of [d.fileName, ...d.chain, trackingLogName(d.fileName)]) moves.push([path.join(a, f), path.join(b, f)]);
    }
    for (const [, to] of moves) if (await exists(to)) throw failed(`cannot migrate VM ${rec.name}: ${to} exists already`);
    for (const [a, b] of moves) {
      await fsp.mkdir(path.dirname(b), { recursive: true });
      await moveFile(a, b);
      result.moved.push(b);
    }
    await fsp.mkdir(lab.paths.vmFolder(after.configLocation, after.host, after.vmId), { recursive: true });
    if (!withinCluster) {
      for (const d of after.disks) {
        d.trackingEpoch = await resetTrackingLog(lab.paths.trackingLog(after, d));
        delete d.referenceTrackingId;
      }
      result.trackingLost = true;
    }
    s.vms[rec.vmId] = after;
    for (const [a] of moves) await fsp.rmdir(path.dirname(a)).catch(() => undefined);
    return result;
  });
}

/** Enable Hyper-V Replica: a replica VM (own id in the lab, same name, off) on `replicaHost`, disks copied. */
export async function enableReplication(lab: LabStore, vm: string, replicaHost: string): Promise<VmFacts> {
  return lab.mutate('enableReplication', async (s) => {
    const rec = lab.findVm(s, vm);
    if (!isSafeName(replicaHost) || !s.hosts[replicaHost]) throw new LabError(`no lab host ${JSON.stringify(replicaHost)}`);
    if (replicaHost === rec.host) throw new LabError('the replica server must be another host');
    const replicaId = randomUUID();
    const rep: VmRecord = {
      ...structuredClone(rec),
      vmId: replicaId,
      host: replicaHost,
      state: 'off',
      configLocation: { kind: 'local' },
      replica: { role: 'replica', primaryServer: rec.host, replicaServer: replicaHost },
      disks: [],
      createdAt: new Date().toISOString(),
    };
    delete rep.clustered;
    delete rep.checkpoint;
    delete rep.writeLoad;
    for (const d of rec.disks) {
      const nd: DiskRecord = { ...structuredClone(d), location: { kind: 'local' }, chain: [], generation: 1 };
      delete nd.referenceTrackingId;
      const folder = lab.paths.diskFolder(rep, nd);
      await fsp.mkdir(folder, { recursive: true });
      await vhdx.copyDiskContent(lab.paths.topPath(rec, d), path.join(folder, nd.fileName));
      nd.trackingEpoch = await resetTrackingLog(lab.paths.trackingLog(rep, nd));
      rep.disks.push(nd);
    }
    rec.replica = { role: 'primary', replicaServer: replicaHost };
    s.vms[replicaId] = rep;
    return facts(lab, s, rep);
  });
}

/** Delete a VM and its files. */
export async function deleteVm(lab: LabStore, vm: string): Promise<void> {
  await lab.mutate('deleteVm', async (s) => {
    const rec = lab.findVm(s, vm);
    await removeVmFiles(lab, rec);
    delete s.vms[rec.vmId];
  });
}

async function removeVmFiles(lab: LabStore, rec: VmRecord): Promise<void> {
  const folders = new Set<string>();
  for (const d of rec.disks) {
    const folder = lab.paths.diskFolder(rec, d);
    folders.add(folder);
    for (const f of [d.fileName, ...d.chain, trackingLogName(d.fileName)]) await fsp.rm(path.join(folder, f), { force: true });
  }
  folders.add(lab.paths.vmFolder(rec.configLocation, rec.host, rec.vmId));
  for (const f of folders) await fsp.rmdir(f).catch(() => undefined);
}

/**
 * Recreate a VM from a backed-up configuration and restored VHDX files (the VM is off; start it to
 * "boot" it). With `replace`, the VM of the same id is replaced in place (it must be off).
 * Repeating a successful import (its files moved in already) returns the imported VM.
 */
export async function importVm(lab: LabStore, opts: LabImportOptions): Promise<VmFacts> {
  const cfg = parseConfig(opts?.config);
  if (!Array.isArray(opts.disks)) throw new LabError('importVm needs the restored disk files');
  const vmId = opts.vmId ?? cfg.vmId;
  if (!isSafeName(vmId)) throw new LabError(`bad VM id ${JSON.stringify(vmId)}`);
  // A retry after a successful import (files already moved into place) returns the imported VM.
  if (!opts.copy && opts.disks.length > 0 && typeof opts.host === 'string') {
    const s0 = await lab.state();
    const done = Object.prototype.hasOwnProperty.call(s0.vms, vmId) ? s0.vms[vmId] : undefined;
    const sameDisks = done && done.disks.map((d) => d.diskId).join('\0') === cfg.disks.map((d) => d.diskId).join('\0');
    if (done && sameDisks && done.host === opts.host) {
      const gone = await Promise.all(opts.disks.map(async (d) => typeof d?.path === 'string' && !(await exists(d.path))));
      if (gone.every(Boolean)) return facts(lab, s0, done);
    }
  }
  const given = new Map<string, string>();
  for (const d of opts.disks) {
    if (!d || typeof d.diskId !== 'string' || typeof d.path !== 'string') throw new LabError(`bad restored disk ${JSON.stringify(d)}`);
    if (!cfg.disks.some((c) => c.diskId === d.diskId)) throw new LabError(`restored disk ${d.diskId} is not in the VM configuration`);
    given.set(d.diskId, d.path);
  }
  for (const c of cfg.disks) {
    const p = given.get(c.diskId);
    if (!p) throw new LabError(`no restored file for disk ${c.diskId}`);
    let size: number;
    try {
      const disk = await vhdx.openDisk(p, false);
      size = disk.virtualSize;
      await disk.close();
    } catch (e) {
      throw new LabError(`restored disk ${c.diskId} (${p}) does not open: ${(e as Error).message}`);
    }
    if (size !== c.virtualSize) throw new LabError(`restored disk ${c.diskId} is ${size} bytes, the configuration says ${c.virtualSize}`);
  }
  return lab.mutate('importVm', async (s) => {
    if (!isSafeName(opts.host) || !s.hosts[opts.host]) throw new LabError(`no lab host ${JSON.stringify(opts.host)}`);
    const existing = s.vms[vmId];
    if (existing && !opts.replace) throw new LabError(`VM id ${vmId} exists already (restore to the original place needs replace)`);
    if (existing && existing.state !== 'off') throw new LabError(`VM ${existing.name} must be off to be replaced, it is ${existing.state}`);
    const reachable = (loc: DiskLocation): DiskLocation =>
      loc.kind === 'csv' && s.hosts[opts.host].cluster !== loc.cluster ? { kind: 'local' } : loc;
    const override = opts.storage !== undefined ? resolveStorage(s, opts.host, opts.storage) : undefined;
    const rec: VmRecord = {
      vmId,
      name: opts.name ?? cfg.name,
      host: opts.host,
      state: 'off',
      guestOs: cfg.guestOs,
      guestOsFamily: cfg.guestOsFamily,
      ...(cfg.guestOsVersion !== undefined ? { guestOsVersion: cfg.guestOsVersion } : {}),
      integrationServices: cfg.integrationServices,
      volumes: cfg.volumes,
      memoryMiB: cfg.memoryMiB,
      processorCount: cfg.processorCount,
      configLocation: override ?? reachable(cfg.configLocation),
      ...(cfg.clustered && s.hosts[opts.host].cluster === cfg.clustered.cluster ? { clustered: cfg.clustered } : {}),
      replica: cfg.replica,
      disks: cfg.disks.map((c) => ({
        diskId: c.diskId,
        controller: c.controller,
        passthrough: c.passthrough,
        virtualSize: c.virtualSize,
        location: override ?? reachable(c.location),
        fileName: `${c.diskId}.vhdx`,
        chain: [],
        generation: 1,
        trackingEpoch: '',
      })),
      createdAt: new Date().toISOString(),
    };
    if (existing) await removeVmFiles(lab, existing);
    for (const d of rec.disks) {
      const folder = lab.paths.diskFolder(rec, d);
      await fsp.mkdir(folder, { recursive: true });
      const target = path.join(folder, d.fileName);
      if (!existing && (await exists(target))) throw new LabError(`${target} exists already`);
      if (opts.copy) await fsp.copyFile(given.get(d.diskId)!, target);
      else await moveFile(given.get(d.diskId)!, target);
      d.trackingEpoch = await resetTrackingLog(lab.paths.trackingLog(rec, d));
    }
    await fsp.mkdir(lab.paths.vmFolder(rec.configLocation, rec.host, rec.vmId), { recursive: true });
    s.vms[vmId] = rec;
    return facts(lab, s, rec);
  });
}
