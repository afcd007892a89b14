// The lab's state file and folder layout.
//
// <labRoot>/
//   lab.json                          hosts, clusters and every VM's configuration and state (this file's LabState)
//   lab.lock                          the lab lock (see lock.ts)
//   hosts/<host>/vms/<vmId>/          local storage of a VM on <host>
//   clusters/<cluster>/csv/<vmId>/    Cluster Shared Volume storage, shared by the cluster's nodes
//   shares/<fileServer>/<share>/<vmId>/  SMB-style storage on a file server
// and in each VM folder, per disk: <diskId>.vhdx (the base disk), <diskId>-<ckpt>.avhdx (a backup
// checkpoint's differencing disk, while it exists) and <diskId>.rct (its change-tracking log).
// A VM may also live in any absolute folder (a restore "to another folder"): location kind 'folder'.
//
// lab.json is replaced atomically (temp + rename) and only under the lab lock; readers that do not
// change anything may read it without the lock.
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type {
  BackupMode,
  ClusterGroupState,
  GuestVolume,
  ReplicaRole,
  VmState,
} from '../types';
import { writeFileDurable } from '../../repository/durable';

export const LAB_FORMAT = 'hvprotect-lab/1';

export type DiskLocation =
  | { kind: 'local' }
  | { kind: 'csv'; cluster: string }
  | { kind: 'smb'; fileServer: string; share: string }
  | { kind: 'folder'; folder: string };

export interface LabHost {
  createdAt: string;
  cluster?: string;
  /** A file server exports SMB shares; its agent may read the disks on its shares. */
  fileServer?: boolean;
}

export interface LabCluster {
  nodes: string[];
}

export interface DiskRecord {
  diskId: string;
  controller: 'ide' | 'scsi';
  passthrough: boolean;
  virtualSize: number;
  location: DiskLocation;
  /** Base VHDX file name in the VM folder of `location`. */
  fileName: string;
  /** Differencing disks above the base, oldest first; the last one takes the guest's writes. */
  chain: string[];
  /** Bumped whenever the chain changes, so a writer holding a disk open knows to reopen it. */
  generation: number;
  trackingEpoch: string;
  /** The change-tracking id of the last reference point (set when a backup checkpoint is released). */
  referenceTrackingId?: string;
}

export interface CheckpointRecord {
  checkpointId: string;
  createdAt: string;
  mode: BackupMode;
  label?: string;
  downtimeMs?: number;
  guestWriteSeq?: number;
  /** Set while an offline checkpoint keeps the VM saved or paused: the state to return to. */
  resumeTo?: VmState;
  /** When the VM was quieted for it (while resumeTo is set). */
  quiescedAt?: string;
  /** The VM is quiet but the differencing disks are not recorded yet: a retry by label finishes it. */
  pending?: boolean;
  disks: { diskId: string; frozenFile: string; childFile: string; changeTrackingId: string; virtualSize: number }[];
}

export interface WriteLoadRecord {
  seed: number;
  diskId: string;
  /** Writes done so far: write #k (0-based) for k < writes is on the disk. */
  writes: number;
  /**
   * Where on the disk the load writes: the whole disk when it has no partition table, else the
   * largest stretch no partition covers (the file systems in the guest stay consistent).
   * Write #k lands at region.offset + guestWrite(seed, k, region.length).offset.
   */
  region?: { offset: number; length: number };
  pid?: number;
  startedAt: string;
}

export interface VmRecord {
  vmId: string;
  name: string;
  host: string;
  state: VmState;
  guestOs: string;
  guestOsFamily: 'windows' | 'linux' | 'other';
  guestOsVersion?: string;
  integrationServices: {
    backup: { enabled: boolean; responding: boolean };
    heartbeat?: { enabled: boolean; responding: boolean };
  };
  volumes: GuestVolume[];
  memoryMiB: number;
  processorCount: number;
  /** Where the VM's own configuration lives (the folder reported as configPath). */
  configLocation: DiskLocation;
  /** Member of a cluster role (the cluster is its host's cluster). */
  clustered?: { cluster: string; groupState: ClusterGroupState };
  replica: { role: ReplicaRole; primaryServer?: string; replicaServer?: string };
  disks: DiskRecord[];
  checkpoint?: CheckpointRecord;
  writeLoad?: WriteLoadRecord;
  createdAt: string;
}

export interface LabState {
  format: typeof LAB_FORMAT;
  hosts: Record<string, LabHost>;
  clusters: Record<string, LabCluster>;
  vms: Record<string, VmRecord>;
}

/** Names that become folder names: no separators, no dot-dot, nothing a shell would mangle. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/** Keys that would reach Object.prototype through a plain-object lookup. */
const RESERVED = new Set(['__proto__', 'constructor', 'prototype', 'hasOwnProperty', 'toString', 'valueOf']);

export function isSafeName(s: unknown): s is string {
  return typeof s === 'string' && NAME_RE.test(s) && !s.includes('..') && !RESERVED.has(s);
}

export class LabPaths {
  readonly root: string;
  constructor(root: string) {
    this.root = path.resolve(root);
  }
  get stateFile(): string {
    return path.join(this.root, 'lab.json');
  }
  get lockFile(): string {
    return path.join(this.root, 'lab.lock');
  }
  hostFolder(host: string): string {
    return path.join(this.root, 'hosts', host);
  }
  csvFolder(cluster: string): string {
    return path.join(this.root, 'clusters', cluster, 'csv');
  }
  shareFolder(fileServer: string, share: string): string {
    return path.join(this.root, 'shares', fileServer, share);
  }
  /** The folder holding a VM's files at `loc` while the VM is owned by `host`. */
  vmFolder(loc: DiskLocation, host: string, vmId: string): string {
    switch (loc.kind) {
      case 'local':
        return path.join(this.hostFolder(host), 'vms', vmId);
      case 'csv':
        return path.join(this.csvFolder(loc.cluster), vmId);
      case 'smb':
        return path.join(this.shareFolder(loc.fileServer, loc.share), vmId);
      case 'folder':
        return loc.folder;
    }
  }
  diskFolder(vm: VmRecord, d: DiskRecord): string {
    return this.vmFolder(d.location, vm.host, vm.vmId);
  }
  basePath(vm: VmRecord, d: DiskRecord): string {
    return path.join(this.diskFolder(vm, d), d.fileName);
  }
  topPath(vm: VmRecord, d: DiskRecord): string {
    return path.join(this.diskFolder(vm, d), d.chain.length ? d.chain[d.chain.length - 1] : d.fileName);
  }
  trackingLog(vm: VmRecord, d: DiskRecord): string {
    return path.join(this.diskFolder(vm, d), trackingLogName(d.fileName));
  }
}

export function trackingLogName(diskFileName: string): string {
  return diskFileName.replace(/\.a?vhdx$/i, '') + '.rct';
}

export function emptyState(): LabState {
  return { format: LAB_FORMAT, hosts: {}, clusters: {}, vms: {} };
}

export class LabStateError extends Error {
  override readonly name = 'LabStateError';
}

export async function readState(paths: LabPaths): Promise<LabState> {
  let raw: string;
  try {
    raw = await fsp.readFile(paths.stateFile, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new LabStateError(`${paths.root} is not a lab: ${paths.stateFile} does not exist (create it with Lab.open)`);
    }
    throw e;
  }
  let s: LabState;
  try {
    s = JSON.parse(raw) as LabState;
  } catch (e) {
    throw new LabStateError(`${paths.stateFile}: not valid JSON: ${(e as Error).message}`);
  }
  if (!s || s.format !== LAB_FORMAT || typeof s.hosts !== 'object' || typeof s.vms !== 'object' || typeof s.clusters !== 'object') {
    throw new LabStateError(`${paths.stateFile}: not a ${LAB_FORMAT} state file`);
  }
  return s;
}

export async function writeState(paths: LabPaths, s: LabState): Promise<void> {
  await writeFileDurable(paths.stateFile, JSON.stringify(s, null, 1) + '\n');
}
