// The lab: file-backed Hyper-V hosts, clusters and VMs for Linux (tests, benchmarks, `npm start`).
// Every change goes through `mutate`: lab lock → read lab.json → change → write lab.json atomically.
// Disk files are created, checkpointed and merged through the VHDX library (vhdx-io.ts).
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import {
  HypervisorError,
  type BackupCheckpoint,
  type BackupMode,
  type ChangedRanges,
  type ClusterGroupState,
  type DiskReader,
  type GuestVolume,
  type OfflineMethod,
  type ReplicaRole,
  type VmFacts,
  type VmState,
  type VmSummary,
} from '../types';
import {
  appendWrites,
  changesBetween,
  currentTrackingPoint,
  formatTrackingId,
  parseTrackingId,
  resetTrackingLog,
} from './change-tracking';
import { REGION_SIZE, guestWrite, initialRegion, type InitialContent } from './disk-content';
import { withLock } from './lock';
import {
  LabPaths,
  emptyState,
  isSafeName,
  readState,
  trackingLogName,
  writeState,
  type CheckpointRecord,
  type DiskLocation,
  type DiskRecord,
  type LabState,
  type VmRecord,
} from './state';
import * as vhdx from './vhdx-io';
import type { WriteLoadResult } from './guest-write-load';

/** A lab request that cannot be carried out as asked (bad spec, unknown host, name taken…). */
async function exists(p: string): Promise<boolean> {
  try {
    await fsp.access(p);
    return true;
  } catch {
    return false;
  }
}

export class LabError extends Error {
  override readonly name = 'LabError';
}

/** Where a VM's files live: the owner's local folder, its cluster's CSV, an SMB share, or any folder. */
export type StorageSpec = 'local' | 'csv' | { smb: { fileServer: string; share: string } } | { folder: string };

export interface LabDiskSpec {
  /** Default: "<controller>0-<index>", e.g. "scsi0-0". */
  diskId?: string;
  sizeBytes: number;
  controller?: 'ide' | 'scsi';
  /** Default: the VM's storage. */
  storage?: StorageSpec;
  passthrough?: boolean;
  /** Default: all zeros (nothing allocated). */
  content?: InitialContent;
  blockSize?: number;
  logicalSectorSize?: 512 | 4096;
}

export interface LabVmSpec {
  name: string;
  host: string;
  /** Default: a random uuid. */
  vmId?: string;
  /** Default 'running'. */
  state?: VmState;
  guestOs?: string;
  guestOsFamily?: 'windows' | 'linux' | 'other';
  guestOsVersion?: string;
  integrationServices?: Partial<VmRecord['integrationServices']>;
  volumes?: GuestVolume[];
  /** Default 'local'; 'csv' needs the host to be a cluster node. */
  storage?: StorageSpec;
  /** Whether the VM is a cluster role (default: when its storage is the CSV). */
  clustered?: boolean;
  clusterGroupState?: ClusterGroupState;
  replica?: { role: ReplicaRole; primaryServer?: string; replicaServer?: string };
  memoryMiB?: number;
  processorCount?: number;
  disks: LabDiskSpec[];
}

/** Every settable property of a VM; omitted fields are left as they are. */
export interface LabVmPatch {
  name?: string;
  /** Set the state as is (no transition rules); use startVm/pauseVm/… for the rules. */
  state?: VmState;
  guestOs?: string;
  guestOsFamily?: 'windows' | 'linux' | 'other';
  /** null removes it. */
  guestOsVersion?: string | null;
  integrationServices?: {
    backup?: Partial<{ enabled: boolean; responding: boolean }>;
    heartbeat?: Partial<{ enabled: boolean; responding: boolean }> | null;
  };
  volumes?: GuestVolume[];
  /** false: not a cluster role; true or an object: a role of its host's cluster. */
  clustered?: boolean | { groupState: ClusterGroupState };
  replica?: { role: ReplicaRole; primaryServer?: string; replicaServer?: string };
  memoryMiB?: number;
  processorCount?: number;
  disks?: Record<string, { controller?: 'ide' | 'scsi'; passthrough?: boolean }>;
}

/** The opaque configuration VmFacts.config carries and importVm takes back. */
export interface LabVmConfig {
  format: 'hvprotect-lab-vm/1';
  vmId: string;
  name: string;
  guestOs: string;
  guestOsFamily: 'windows' | 'linux' | 'other';
  guestOsVersion?: string;
  integrationServices: VmRecord['integrationServices'];
  volumes: GuestVolume[];
  memoryMiB: number;
  processorCount: number;
  configLocation: DiskLocation;
  clustered?: VmRecord['clustered'];
  replica: VmRecord['replica'];
  disks: { diskId: string; controller: 'ide' | 'scsi'; passthrough: boolean; virtualSize: number; location: DiskLocation; fileName: string }[];
}

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

export interface WriteLoadProcess {
  readonly pid: number;
  readonly vmId: string;
  readonly diskId: string;
  /** SIGTERM, then wait for a clean stop. */
  stop(): Promise<WriteLoadResult>;
  readonly exited: Promise<WriteLoadResult>;
}

export interface StartWriteLoadOptions {
  vm: string;
  seed: number;
  diskId?: string;
  intervalMs?: number;
  batch?: number;
  maxWrites?: number;
}

const DEFAULT_GUEST = { guestOs: 'Windows Server 2019 Datacenter', guestOsFamily: 'windows' as const, guestOsVersion: '10.0.17763' };
const VM_STATES: VmState[] = ['running', 'paused', 'saved', 'off'];
const GROUP_STATES: ClusterGroupState[] = ['online', 'offline', 'partial', 'failed'];
const REPLICA_ROLES: ReplicaRole[] = ['none', 'primary', 'replica'];
const MAX_DISK_SIZE = 64 * 2 ** 40;

function notFound(vm: unknown, root: string): HypervisorError {
  const shown = typeof vm === 'string' ? JSON.stringify(vm.slice(0, 200)) : `(${typeof vm})`;
  return new HypervisorError('VmNotFound', `no VM ${shown} in lab ${root}`, { vm: typeof vm === 'string' ? vm.slice(0, 200) : undefined });
}

function failed(message: string, details: Record<string, unknown> = {}): HypervisorError {
  return new HypervisorError('HypervisorCommandFailed', message, details);
}

function locationKind(loc: DiskLocation): 'local' | 'csv' | 'smb' {
  return loc.kind === 'folder' ? 'local' : loc.kind;
}

export class Lab {
  readonly paths: LabPaths;

  private constructor(root: string) {
    this.paths = new LabPaths(root);
  }

  get root(): string {
    return this.paths.root;
  }

  /** Open the lab at `root`, creating an empty one if there is none. */
  static async open(root: string): Promise<Lab> {
    const lab = new Lab(root);
    await fsp.mkdir(lab.root, { recursive: true });
    if (!(await exists(lab.paths.stateFile))) {
      await withLock(lab.paths.lockFile, async () => {
        if (!(await exists(lab.paths.stateFile))) await writeState(lab.paths, emptyState());
      });
    }
    await readState(lab.paths); // refuse a folder whose lab.json is not ours
    return lab;
  }

  /** A snapshot of the whole lab state. */
  async state(): Promise<LabState> {
    return readState(this.paths);
  }

  /** Read, change and write lab.json under the lab lock; written only if `fn` changed it. */
  async mutate<T>(purpose: string, fn: (s: LabState) => Promise<T>): Promise<T> {
    return withLock(
      this.paths.lockFile,
      async () => {
        const s = await readState(this.paths);
        const before = JSON.stringify(s);
        const out = await fn(s);
        if (JSON.stringify(s) !== before) await writeState(this.paths, s);
        return out;
      },
      { purpose },
    );
  }

  /** Persist an intermediate state inside `mutate` (a step a crash must not undo). */
  private async save(s: LabState): Promise<void> {
    await writeState(this.paths, s);
  }

  // ---- hosts and clusters ----

  async createHost(name: string, opts: { fileServer?: boolean } = {}): Promise<void> {
    if (!isSafeName(name)) throw new LabError(`bad host name ${JSON.stringify(name)}`);
    await this.mutate('createHost', async (s) => {
      const h = s.hosts[name] ?? { createdAt: new Date().toISOString() };
      if (opts.fileServer) h.fileServer = true;
      s.hosts[name] = h;
      await fsp.mkdir(path.join(this.paths.hostFolder(name), 'vms'), { recursive: true });
    });
  }

  /** Create a cluster of `nodes` (hosts are created if missing); adding nodes to an existing cluster is allowed. */
  async createCluster(name: string, nodes: string[]): Promise<void> {
    if (!isSafeName(name)) throw new LabError(`bad cluster name ${JSON.stringify(name)}`);
    if (!Array.isArray(nodes) || nodes.length === 0) throw new LabError(`cluster ${name} needs at least one node`);
    for (const n of nodes) if (!isSafeName(n)) throw new LabError(`bad host name ${JSON.stringify(n)}`);
    await this.mutate('createCluster', async (s) => {
      for (const n of nodes) {
        const other = s.hosts[n]?.cluster;
        if (other && other !== name) throw new LabError(`host ${n} is already a node of cluster ${other}`);
      }
      const c = s.clusters[name] ?? { nodes: [] };
      for (const n of nodes) {
        s.hosts[n] ??= { createdAt: new Date().toISOString() };
        s.hosts[n].cluster = name;
        if (!c.nodes.includes(n)) c.nodes.push(n);
        await fsp.mkdir(path.join(this.paths.hostFolder(n), 'vms'), { recursive: true });
      }
      s.clusters[name] = c;
      await fsp.mkdir(this.paths.csvFolder(name), { recursive: true });
    });
  }

  // ---- looking VMs up ----

  /** Find a VM by id or name; by name, a VM on `preferHost` wins. */
  findVm(s: LabState, vm: unknown, preferHost?: string): VmRecord {
    if (typeof vm !== 'string' || vm.length === 0 || vm.length > 256) throw notFound(vm, this.root);
    const byId = Object.prototype.hasOwnProperty.call(s.vms, vm) ? s.vms[vm] : undefined;
    if (byId) return byId;
    const named = Object.values(s.vms).filter((v) => v.name === vm);
    if (named.length === 0) throw notFound(vm, this.root);
    const here = preferHost ? named.filter((v) => v.host === preferHost) : [];
    // A Hyper-V Replica pair shares its name: without a host, the name means the primary.
    const primaries = named.filter((v) => v.replica.role !== 'replica');
    const pick = here.length ? here : primaries.length === 1 ? primaries : named;
    if (pick.length > 1) {
      throw failed(`VM name ${JSON.stringify(vm)} is ambiguous (${pick.map((v) => v.vmId).join(', ')}); use the VM id`, { vm });
    }
    return pick[0];
  }

  /** The VM, which must be owned by `host` (else VmNotOnHost naming its owner). */
  findVmOnHost(s: LabState, vm: unknown, host: string): VmRecord {
    const rec = this.findVm(s, vm, host);
    if (rec.host !== host) {
      throw new HypervisorError('VmNotOnHost', `VM ${rec.name} (${rec.vmId}) is on host ${rec.host}, not on ${host}`, {
        vmId: rec.vmId,
        host: rec.host,
        askedHost: host,
      });
    }
    return rec;
  }

  async getVm(vm: string): Promise<VmRecord> {
    return this.findVm(await this.state(), vm);
  }

  /** Who owns the VM now (follows migrations at once). */
  async locateVm(vm: string): Promise<{ vmId: string; name: string; host: string; cluster?: string }> {
    const s = await this.state();
    const rec = this.findVm(s, vm);
    return { vmId: rec.vmId, name: rec.name, host: rec.host, cluster: s.hosts[rec.host]?.cluster };
  }

  async listVms(host?: string): Promise<VmSummary[]> {
    const s = await this.state();
    return Object.values(s.vms)
      .filter((v) => host === undefined || v.host === host)
      .map((v) => ({ vmId: v.vmId, name: v.name, host: v.host, state: v.state, ...(v.clustered ? { cluster: v.clustered.cluster } : {}) }));
  }

  async inspectVm(vm: string): Promise<VmFacts> {
    const s = await this.state();
    return this.facts(s, this.findVm(s, vm));
  }

  facts(s: LabState, vm: VmRecord): VmFacts {
    const cluster = vm.clustered ? s.clusters[vm.clustered.cluster] : undefined;
    return {
      vmId: vm.vmId,
      name: vm.name,
      host: vm.host,
      state: vm.state,
      guestOs: vm.guestOs,
      guestOsFamily: vm.guestOsFamily,
      ...(vm.guestOsVersion !== undefined ? { guestOsVersion: vm.guestOsVersion } : {}),
      integrationServices: structuredClone(vm.integrationServices),
      volumes: structuredClone(vm.volumes),
      disks: vm.disks.map((d) => ({
        diskId: d.diskId,
        path: this.paths.topPath(vm, d),
        basePath: this.paths.basePath(vm, d),
        virtualSize: d.virtualSize,
        storage: locationKind(d.location),
        ...(d.location.kind === 'smb' ? { fileServer: d.location.fileServer } : {}),
        passthrough: d.passthrough,
        controller: d.controller,
        ...(d.referenceTrackingId ? { changeTrackingId: d.referenceTrackingId } : {}),
      })),
      ...(vm.clustered
        ? {
            cluster: {
              name: vm.clustered.cluster,
              groupState: vm.clustered.groupState,
              ownerNode: vm.host,
              nodes: [...(cluster?.nodes ?? [])],
            },
          }
        : {}),
      replica: structuredClone(vm.replica),
      configPath: this.paths.vmFolder(vm.configLocation, vm.host, vm.vmId),
      config: this.config(vm) as unknown as Record<string, unknown>,
      checkpoints: vm.checkpoint
        ? [
            {
              checkpointId: vm.checkpoint.checkpointId,
              createdAt: vm.checkpoint.createdAt,
              kind: 'backup' as const,
              ...(vm.checkpoint.label !== undefined ? { label: vm.checkpoint.label } : {}),
            },
          ]
        : [],
    };
  }

  config(vm: VmRecord): LabVmConfig {
    return {
      format: 'hvprotect-lab-vm/1',
      vmId: vm.vmId,
      name: vm.name,
      guestOs: vm.guestOs,
      guestOsFamily: vm.guestOsFamily,
      ...(vm.guestOsVersion !== undefined ? { guestOsVersion: vm.guestOsVersion } : {}),
      integrationServices: structuredClone(vm.integrationServices),
      volumes: structuredClone(vm.volumes),
      memoryMiB: vm.memoryMiB,
      processorCount: vm.processorCount,
      configLocation: structuredClone(vm.configLocation),
      ...(vm.clustered ? { clustered: { ...vm.clustered } } : {}),
      replica: structuredClone(vm.replica),
      disks: vm.disks.map((d) => ({
        diskId: d.diskId,
        controller: d.controller,
        passthrough: d.passthrough,
        virtualSize: d.virtualSize,
        location: structuredClone(d.location),
        fileName: d.fileName,
      })),
    };
  }

  // ---- creating and changing VMs ----

  private resolveStorage(s: LabState, host: string, spec: StorageSpec | undefined): DiskLocation {
    if (spec === undefined || spec === 'local') return { kind: 'local' };
    if (spec === 'csv') {
      const cluster = s.hosts[host]?.cluster;
      if (!cluster) throw new LabError(`host ${host} is not a cluster node: it has no CSV`);
      return { kind: 'csv', cluster };
    }
    if (typeof spec === 'object' && spec && 'smb' in spec) {
      const { fileServer, share } = spec.smb ?? ({} as { fileServer: string; share: string });
      if (!isSafeName(fileServer) || !isSafeName(share)) throw new LabError(`bad SMB location ${JSON.stringify(spec.smb)}`);
      return { kind: 'smb', fileServer, share };
    }
    if (typeof spec === 'object' && spec && 'folder' in spec) {
      if (typeof spec.folder !== 'string' || !path.isAbsolute(spec.folder)) throw new LabError(`folder storage needs an absolute path, got ${JSON.stringify(spec.folder)}`);
      return { kind: 'folder', folder: path.resolve(spec.folder) };
    }
    throw new LabError(`bad storage ${JSON.stringify(spec)}`);
  }

  private checkProps(p: {
    name?: unknown;
    state?: unknown;
    guestOsFamily?: unknown;
    volumes?: unknown;
    replica?: { role?: unknown } | undefined;
    groupState?: unknown;
  }): void {
    if (p.name !== undefined && (typeof p.name !== 'string' || p.name.length === 0 || p.name.length > 100)) {
      throw new LabError(`bad VM name ${JSON.stringify(p.name)}`);
    }
    if (p.state !== undefined && !VM_STATES.includes(p.state as VmState)) throw new LabError(`bad VM state ${JSON.stringify(p.state)}`);
    if (p.guestOsFamily !== undefined && !['windows', 'linux', 'other'].includes(p.guestOsFamily as string)) {
      throw new LabError(`bad guest OS family ${JSON.stringify(p.guestOsFamily)}`);
    }
    if (p.volumes !== undefined) {
      if (!Array.isArray(p.volumes)) throw new LabError('volumes must be a list');
      for (const v of p.volumes as GuestVolume[]) {
        if (!v || typeof v.name !== 'string' || typeof v.fileSystem !== 'string' || typeof v.dynamicDisk !== 'boolean') {
          throw new LabError(`bad guest volume ${JSON.stringify(v)}`);
        }
      }
    }
    if (p.replica !== undefined && !REPLICA_ROLES.includes(p.replica?.role as ReplicaRole)) {
      throw new LabError(`bad replica role ${JSON.stringify(p.replica?.role)}`);
    }
    if (p.groupState !== undefined && !GROUP_STATES.includes(p.groupState as ClusterGroupState)) {
      throw new LabError(`bad cluster group state ${JSON.stringify(p.groupState)}`);
    }
  }

  /** Create a VM with real VHDX disks holding their initial content. */
  async createVm(spec: LabVmSpec): Promise<VmFacts> {
    if (!spec || typeof spec !== 'object') throw new LabError('createVm needs a spec');
    const vmId = spec.vmId ?? randomUUID();
    if (!isSafeName(vmId)) throw new LabError(`bad VM id ${JSON.stringify(vmId)}`);
    this.checkProps({ name: spec.name, state: spec.state, guestOsFamily: spec.guestOsFamily, volumes: spec.volumes, replica: spec.replica, groupState: spec.clusterGroupState });
    if (!Array.isArray(spec.disks)) throw new LabError('createVm needs a list of disks');

    // Validate against the current state and lay out the disks; files are made outside the lock.
    const s0 = await this.state();
    if (!isSafeName(spec.host) || !s0.hosts[spec.host]) throw new LabError(`no lab host ${JSON.stringify(spec.host)}`);
    if (s0.vms[vmId]) throw new LabError(`VM id ${vmId} exists already`);
    const vmStorage = this.resolveStorage(s0, spec.host, spec.storage);
    const seen = new Set<string>();
    const disks: (DiskRecord & { content?: InitialContent; blockSize?: number; logicalSectorSize?: 512 | 4096 })[] = spec.disks.map((d, i) => {
      const controller = d.controller ?? 'scsi';
      if (controller !== 'ide' && controller !== 'scsi') throw new LabError(`bad controller ${JSON.stringify(controller)}`);
      const diskId = d.diskId ?? `${controller}0-${i}`;
      if (!isSafeName(diskId)) throw new LabError(`bad disk id ${JSON.stringify(diskId)}`);
      if (seen.has(diskId)) throw new LabError(`disk id ${diskId} given twice`);
      seen.add(diskId);
      if (!Number.isSafeInteger(d.sizeBytes) || d.sizeBytes <= 0 || d.sizeBytes % 512 !== 0 || d.sizeBytes > MAX_DISK_SIZE) {
        throw new LabError(`disk ${diskId}: size must be a positive multiple of 512 bytes up to 64 TiB, got ${d.sizeBytes}`);
      }
      return {
        diskId,
        controller,
        passthrough: d.passthrough ?? false,
        virtualSize: d.sizeBytes,
        location: d.storage !== undefined ? this.resolveStorage(s0, spec.host, d.storage) : vmStorage,
        fileName: `${diskId}.vhdx`,
        chain: [],
        generation: 1,
        trackingEpoch: '',
        content: d.content,
        blockSize: d.blockSize,
        logicalSectorSize: d.logicalSectorSize,
      };
    });
    const clusterOfHost = s0.hosts[spec.host].cluster;
    const clustered = spec.clustered ?? vmStorage.kind === 'csv';
    if (clustered && !clusterOfHost) throw new LabError(`VM ${spec.name} cannot be clustered: host ${spec.host} is not a cluster node`);

    const rec: VmRecord = {
      vmId,
      name: spec.name,
      host: spec.host,
      state: spec.state ?? 'running',
      guestOs: spec.guestOs ?? (spec.guestOsFamily && spec.guestOsFamily !== 'windows' ? spec.guestOsFamily : DEFAULT_GUEST.guestOs),
      guestOsFamily: spec.guestOsFamily ?? DEFAULT_GUEST.guestOsFamily,
      ...(spec.guestOsVersion !== undefined
        ? { guestOsVersion: spec.guestOsVersion }
        : (spec.guestOsFamily ?? 'windows') === 'windows'
          ? { guestOsVersion: DEFAULT_GUEST.guestOsVersion }
          : {}),
      integrationServices: {
        backup: { enabled: true, responding: true, ...(spec.integrationServices?.backup ?? {}) },
        heartbeat: { enabled: true, responding: true, ...(spec.integrationServices?.heartbeat ?? {}) },
      },
      volumes: spec.volumes ?? [{ name: 'C:', fileSystem: 'NTFS', dynamicDisk: false }],
      memoryMiB: spec.memoryMiB ?? 2048,
      processorCount: spec.processorCount ?? 2,
      configLocation: vmStorage,
      ...(clustered ? { clustered: { cluster: clusterOfHost!, groupState: spec.clusterGroupState ?? 'online' } } : {}),
      replica: spec.replica ?? { role: 'none' },
      disks: [],
      createdAt: new Date().toISOString(),
    };

    const made: string[] = [];
    try {
      for (const d of disks) {
        const folder = this.paths.vmFolder(d.location, rec.host, vmId);
        await fsp.mkdir(folder, { recursive: true });
        const file = path.join(folder, d.fileName);
        if (await exists(file)) throw new LabError(`${file} exists already`);
        made.push(file);
        await vhdx.createDisk(file, { virtualSize: d.virtualSize, blockSize: d.blockSize, logicalSectorSize: d.logicalSectorSize });
        if (d.content && d.content.kind !== 'zeros') await this.writeInitialContent(file, d.content, d.virtualSize);
        made.push(path.join(folder, trackingLogName(d.fileName)));
        d.trackingEpoch = await resetTrackingLog(path.join(folder, trackingLogName(d.fileName)));
        const { content: _c, blockSize: _b, logicalSectorSize: _l, ...record } = d;
        rec.disks.push(record);
      }
      await fsp.mkdir(this.paths.vmFolder(rec.configLocation, rec.host, vmId), { recursive: true });
      return await this.mutate('createVm', async (s) => {
        if (!s.hosts[rec.host]) throw new LabError(`no lab host ${JSON.stringify(rec.host)}`);
        if (s.vms[vmId]) throw new LabError(`VM id ${vmId} exists already`);
        s.vms[vmId] = rec;
        return this.facts(s, rec);
      });
    } catch (e) {
      for (const f of made) await fsp.rm(f, { force: true });
      throw e;
    }
  }

  private async writeInitialContent(file: string, content: InitialContent, virtualSize: number): Promise<void> {
    const disk = await vhdx.openDisk(file, true);
    try {
      for (let i = 0; i * REGION_SIZE < virtualSize; i++) {
        const data = initialRegion(content, i, virtualSize);
        if (data) await disk.write(i * REGION_SIZE, data);
      }
      await disk.flush();
    } finally {
      await disk.close();
    }
  }

  async setVmProperties(vm: string, patch: LabVmPatch): Promise<VmFacts> {
    if (!patch || typeof patch !== 'object') throw new LabError('setVmProperties needs a patch object');
    const groupState = typeof patch.clustered === 'object' && patch.clustered ? patch.clustered.groupState : undefined;
    this.checkProps({ name: patch.name, state: patch.state, guestOsFamily: patch.guestOsFamily, volumes: patch.volumes, replica: patch.replica, groupState });
    return this.mutate('setVmProperties', async (s) => {
      const rec = this.findVm(s, vm);
      if (patch.name !== undefined) rec.name = patch.name;
      if (patch.state !== undefined) rec.state = patch.state;
      if (patch.guestOs !== undefined) rec.guestOs = String(patch.guestOs);
      if (patch.guestOsFamily !== undefined) rec.guestOsFamily = patch.guestOsFamily;
      if (patch.guestOsVersion === null) delete rec.guestOsVersion;
      else if (patch.guestOsVersion !== undefined) rec.guestOsVersion = String(patch.guestOsVersion);
      const is = patch.integrationServices;
      if (is?.backup) rec.integrationServices.backup = { ...rec.integrationServices.backup, ...is.backup };
      if (is?.heartbeat === null) delete rec.integrationServices.heartbeat;
      else if (is?.heartbeat) rec.integrationServices.heartbeat = { enabled: true, responding: true, ...rec.integrationServices.heartbeat, ...is.heartbeat };
      if (patch.volumes !== undefined) rec.volumes = structuredClone(patch.volumes);
      if (patch.clustered === false) delete rec.clustered;
      else if (patch.clustered !== undefined) {
        const cluster = s.hosts[rec.host]?.cluster;
        if (!cluster) throw new LabError(`VM ${rec.name} cannot be clustered: host ${rec.host} is not a cluster node`);
        rec.clustered = { cluster, groupState: groupState ?? rec.clustered?.groupState ?? 'online' };
      }
      if (patch.replica !== undefined) rec.replica = structuredClone(patch.replica);
      if (patch.memoryMiB !== undefined) rec.memoryMiB = patch.memoryMiB;
      if (patch.processorCount !== undefined) rec.processorCount = patch.processorCount;
      for (const [diskId, dp] of Object.entries(patch.disks ?? {})) {
        const d = rec.disks.find((x) => x.diskId === diskId);
        if (!d) throw new LabError(`VM ${rec.name} has no disk ${JSON.stringify(diskId)}`);
        if (dp.controller !== undefined) {
          if (dp.controller !== 'ide' && dp.controller !== 'scsi') throw new LabError(`bad controller ${JSON.stringify(dp.controller)}`);
          d.controller = dp.controller;
        }
        if (dp.passthrough !== undefined) d.passthrough = Boolean(dp.passthrough);
      }
      return this.facts(s, rec);
    });
  }

  // ---- VM state ----

  /** Start (or restore from saved) a VM; its disks must open, as a booting VM's would. */
  async startVm(vm: string, host?: string): Promise<void> {
    await this.mutate('startVm', async (s) => {
      const rec = host ? this.findVmOnHost(s, vm, host) : this.findVm(s, vm);
      if (rec.state === 'running') return;
      for (const d of rec.disks) {
        const p = this.paths.topPath(rec, d);
        try {
          await (await vhdx.openDisk(p, false)).close();
        } catch (e) {
          throw failed(`VM ${rec.name} cannot start: disk ${d.diskId} (${p}) does not open: ${(e as Error).message}`, { vmId: rec.vmId, diskId: d.diskId });
        }
      }
      rec.state = 'running';
      if (rec.checkpoint) delete rec.checkpoint.resumeTo;
    });
  }

  /** Turn a VM off. */
  async stopVm(vm: string, host?: string): Promise<void> {
    await this.mutate('stopVm', async (s) => {
      const rec = host ? this.findVmOnHost(s, vm, host) : this.findVm(s, vm);
      rec.state = 'off';
      if (rec.checkpoint) delete rec.checkpoint.resumeTo;
    });
  }

  async pauseVm(vm: string, host?: string): Promise<void> {
    await this.transition(vm, host, 'paused');
  }

  async saveVm(vm: string, host?: string): Promise<void> {
    await this.transition(vm, host, 'saved');
  }

  async resumeVm(vm: string, host?: string): Promise<void> {
    await this.transition(vm, host, 'running');
  }

  private async transition(vm: string, host: string | undefined, to: 'paused' | 'saved' | 'running'): Promise<void> {
    await this.mutate(`${to}Vm`, async (s) => {
      const rec = host ? this.findVmOnHost(s, vm, host) : this.findVm(s, vm);
      const from = rec.state;
      if (from === to) return;
      const allowed: Record<typeof to, VmState[]> = { paused: ['running'], saved: ['running', 'paused'], running: ['paused', 'saved'] };
      if (!allowed[to].includes(from)) {
        const verb = { paused: 'pause', saved: 'save', running: 'resume' }[to];
        throw failed(`cannot ${verb} VM ${rec.name}: it is ${from}${from === 'off' ? ' (start it instead)' : ''}`, { vmId: rec.vmId, state: from });
      }
      rec.state = to;
      if (to === 'running' && rec.checkpoint) delete rec.checkpoint.resumeTo;
    });
  }

  // ---- guest I/O ----

  /**
   * Guest writes on a running VM's disk: ranges go to the change-tracking log (fsync'd) first, then
   * the data to the disk file the VM writes to now (the AVHDX while a checkpoint exists).
   */
  async writeDisk(vm: string, diskId: string, offset: number, data: Buffer): Promise<void> {
    await this.mutate('writeDisk', async (s) => {
      const rec = this.findVm(s, vm);
      if (rec.state !== 'running') throw failed(`VM ${rec.name} is ${rec.state}: the guest cannot write`, { vmId: rec.vmId });
      const d = this.disk(rec, diskId);
      if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.length > d.virtualSize) {
        throw failed(`write ${offset}+${data.length} lies outside disk ${diskId} (${d.virtualSize} bytes)`);
      }
      await this.applyWrites(rec, d, [{ offset, data }]);
    });
  }

  private async applyWrites(rec: VmRecord, d: DiskRecord, writes: { offset: number; data: Buffer }[]): Promise<void> {
    await appendWrites(this.paths.trackingLog(rec, d), writes.map((w) => ({ offset: w.offset, length: w.data.length })));
    await vhdx.writeDisk(this.paths.topPath(rec, d), writes);
  }

  /** What the guest sees now on a disk (through any checkpoint's AVHDX). */
  async readDisk(vm: string, diskId: string, offset: number, length: number): Promise<Buffer> {
    return this.locked('readDisk', async (s) => {
      const rec = this.findVm(s, vm);
      return vhdx.readDisk(this.paths.topPath(rec, this.disk(rec, diskId)), offset, length);
    });
  }

  private disk(rec: VmRecord, diskId: unknown): DiskRecord {
    const d = typeof diskId === 'string' ? rec.disks.find((x) => x.diskId === diskId) : undefined;
    if (!d) {
      throw failed(`VM ${rec.name} (${rec.vmId}) has no disk ${JSON.stringify(typeof diskId === 'string' ? diskId.slice(0, 100) : diskId)}`, {
        vmId: rec.vmId,
        diskId,
      });
    }
    return d;
  }

  /** Register a guest write load on a VM; it continues where a load with the same seed and disk stopped. */
  async registerWriteLoad(vm: string, opts: { seed: number; diskId?: string; pid?: number }): Promise<{ vmId: string; diskId: string; writes: number }> {
    if (!Number.isSafeInteger(opts.seed)) throw new LabError(`seed must be an integer, got ${opts.seed}`);
    return this.mutate('registerWriteLoad', async (s) => {
      const rec = this.findVm(s, vm);
      const diskId = opts.diskId ?? rec.disks[0]?.diskId;
      if (diskId === undefined) throw failed(`VM ${rec.name} has no disk to write to`);
      this.disk(rec, diskId);
      const cur = rec.writeLoad;
      if (cur?.pid !== undefined && cur.pid !== opts.pid && cur.pid !== process.pid && pidAlive(cur.pid)) {
        throw failed(`VM ${rec.name} already has a guest write load (pid ${cur.pid})`, { vmId: rec.vmId, pid: cur.pid });
      }
      const writes = cur && cur.seed === opts.seed && cur.diskId === diskId ? cur.writes : 0;
      rec.writeLoad = { seed: opts.seed, diskId, writes, ...(opts.pid !== undefined ? { pid: opts.pid } : {}), startedAt: new Date().toISOString() };
      return { vmId: rec.vmId, diskId, writes };
    });
  }

  /**
   * One batch of the registered write load: the next `count` writes of its seed, if the VM runs.
   * `state` 'gone' means the VM was deleted, 'replaced' that another load took over.
   */
  async guestWriteBatch(vmId: string, opts: { count: number; maxWrites?: number; pid?: number }): Promise<{ written: number; writes: number; state: VmState | 'gone' | 'replaced' }> {
    return this.mutate('guestWrites', async (s) => {
      const rec = s.vms[vmId];
      if (!rec) return { written: 0, writes: 0, state: 'gone' as const };
      const wl = rec.writeLoad;
      if (!wl || (opts.pid !== undefined && wl.pid !== undefined && wl.pid !== opts.pid)) return { written: 0, writes: wl?.writes ?? 0, state: 'replaced' as const };
      if (rec.state !== 'running') return { written: 0, writes: wl.writes, state: rec.state };
      const d = this.disk(rec, wl.diskId);
      const n = Math.max(0, Math.min(opts.count, (opts.maxWrites ?? Infinity) - wl.writes));
      if (n === 0) return { written: 0, writes: wl.writes, state: rec.state };
      const writes = [];
      for (let i = 0; i < n; i++) writes.push(guestWrite(wl.seed, wl.writes + i, d.virtualSize));
      await this.applyWrites(rec, d, writes);
      wl.writes += n;
      return { written: n, writes: wl.writes, state: rec.state };
    });
  }

  /** Run a guest write load as a child process (see guest-write-load.ts); resolves once it writes. It stops with this process. */
  async startWriteLoad(opts: StartWriteLoadOptions): Promise<WriteLoadProcess> {
    const args = ['--lab', this.root, '--vm', opts.vm, '--seed', String(opts.seed), '--stop-with-parent'];
    if (opts.diskId !== undefined) args.push('--disk', opts.diskId);
    if (opts.intervalMs !== undefined) args.push('--interval-ms', String(opts.intervalMs));
    if (opts.batch !== undefined) args.push('--batch', String(opts.batch));
    if (opts.maxWrites !== undefined) args.push('--max-writes', String(opts.maxWrites));
    const js = path.join(__dirname, 'guest-write-load.js');
    const nodeArgs = existsSync(js) ? [js, ...args] : ['-e', TS_ENTRY, path.join(__dirname, 'guest-write-load.ts'), ...args];
    const env = existsSync(js) ? process.env : { ...process.env, HVP_LAB_SWC: require.resolve('@swc/core') };
    const child = spawn(process.execPath, nodeArgs, { stdio: ['pipe', 'pipe', 'pipe'], env });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr = (stderr + c).slice(-4000)));
    let out = '';
    let result: WriteLoadResult | undefined;
    let onStarted: (v: { vmId: string; diskId: string }) => void;
    const started = new Promise<{ vmId: string; diskId: string }>((r) => (onStarted = r));
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      out += c;
      let nl: number;
      while ((nl = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        try {
          const { event, ...ev } = JSON.parse(line) as { event: string } & Record<string, unknown>;
          if (event === 'started') onStarted(ev as unknown as { vmId: string; diskId: string });
          if (event === 'stopped') result = ev as unknown as WriteLoadResult;
        } catch {
          /* not ours */
        }
      }
    });
    const exited = new Promise<WriteLoadResult>((resolve, reject) => {
      child.on('exit', (code, signal) => {
        if (result && code === 0) resolve(result);
        else reject(new LabError(`guest write load (pid ${child.pid}) exited with ${signal ?? code}: ${stderr.trim()}`));
      });
      child.on('error', reject);
    });
    exited.catch(() => undefined);
    const first = await Promise.race([started, exited]);
    const info = first as { vmId: string; diskId: string };
    return {
      pid: child.pid!,
      vmId: info.vmId,
      diskId: info.diskId,
      exited,
      stop: async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        return exited;
      },
    };
  }

  // ---- backup checkpoints ----

  async createBackupCheckpoint(
    host: string,
    vm: string,
    opts: { mode: BackupMode; offlineMethod?: OfflineMethod | 'none'; label?: string },
  ): Promise<BackupCheckpoint> {
    if (!opts || (opts.mode !== 'online' && opts.mode !== 'offline')) throw failed(`bad backup mode ${JSON.stringify(opts?.mode)}`);
    // undefined or 'none': leave the VM as it is (it is off, saved, paused or a replica).
    const method = opts.offlineMethod ?? 'none';
    if (method !== 'save' && method !== 'pause' && method !== 'none') throw failed(`bad offline method ${JSON.stringify(method)}`);
    return this.mutate('createBackupCheckpoint', async (s) => {
      const rec = this.findVmOnHost(s, vm, host);
      if (rec.checkpoint) {
        if (opts.label !== undefined && rec.checkpoint.label === opts.label) return this.backupCheckpoint(rec, rec.checkpoint);
        throw failed(`VM ${rec.name} already has backup checkpoint ${rec.checkpoint.checkpointId}; release it first`, {
          vmId: rec.vmId,
          checkpointId: rec.checkpoint.checkpointId,
        });
      }
      const pt = rec.disks.find((d) => d.passthrough);
      if (pt) {
        throw failed(`VM ${rec.name} has passthrough disk ${pt.diskId}: a checkpoint cannot include it; protect the VM at guest level`, {
          vmId: rec.vmId,
          diskId: pt.diskId,
        });
      }
      const checkpointId = randomUUID();
      const ck: CheckpointRecord = {
        checkpointId,
        createdAt: new Date().toISOString(),
        mode: opts.mode,
        ...(opts.label !== undefined ? { label: String(opts.label) } : {}),
        disks: [],
      };
      let quietSince: number | undefined;
      if (opts.mode === 'offline' && method !== 'none' && rec.state === 'running') {
        quietSince = performance.now();
        rec.state = method === 'save' ? 'saved' : 'paused';
        ck.resumeTo = 'running';
        rec.checkpoint = ck;
        await this.save(s);
      }
      try {
        for (const d of rec.disks) {
          const folder = this.paths.diskFolder(rec, d);
          const frozenFile = d.chain.length ? d.chain[d.chain.length - 1] : d.fileName;
          const childFile = `${d.diskId}-${checkpointId.slice(0, 8)}.avhdx`;
          const point = await currentTrackingPoint(this.paths.trackingLog(rec, d));
          await vhdx.createChild(path.join(folder, childFile), path.join(folder, frozenFile));
          d.chain.push(childFile);
          d.generation += 1;
          ck.disks.push({ diskId: d.diskId, frozenFile, childFile, changeTrackingId: formatTrackingId(point), virtualSize: d.virtualSize });
        }
      } catch (e) {
        // Undo: no half checkpoint, and a VM quieted for it runs again.
        for (const c of ck.disks) {
          const d = this.disk(rec, c.diskId);
          d.chain.pop();
          d.generation += 1;
          await fsp.rm(path.join(this.paths.diskFolder(rec, d), c.childFile), { force: true });
        }
        if (ck.resumeTo) rec.state = ck.resumeTo;
        delete rec.checkpoint;
        await this.save(s);
        throw failed(`cannot create a backup checkpoint of VM ${rec.name}: ${(e as Error).message}`, { vmId: rec.vmId });
      }
      if (rec.writeLoad) ck.guestWriteSeq = rec.writeLoad.writes;
      rec.checkpoint = ck;
      if (quietSince !== undefined) {
        await this.save(s); // the differencing disks exist before the VM runs again
        rec.state = 'running';
        delete ck.resumeTo;
        ck.downtimeMs = Math.max(0, Math.round((performance.now() - quietSince) * 1000) / 1000);
      } else if (opts.mode === 'offline') {
        ck.downtimeMs = 0;
      }
      return this.backupCheckpoint(rec, ck);
    });
  }

  backupCheckpoint(rec: VmRecord, ck: CheckpointRecord): BackupCheckpoint {
    return {
      checkpointId: ck.checkpointId,
      vmId: rec.vmId,
      host: rec.host,
      mode: ck.mode,
      createdAt: ck.createdAt,
      disks: ck.disks.map((c) => {
        const d = this.disk(rec, c.diskId);
        return { diskId: c.diskId, frozenPath: path.join(this.paths.diskFolder(rec, d), c.frozenFile), virtualSize: c.virtualSize, changeTrackingId: c.changeTrackingId };
      }),
      ...(ck.downtimeMs !== undefined ? { downtimeMs: ck.downtimeMs } : {}),
      ...(ck.guestWriteSeq !== undefined ? { guestWriteSeq: ck.guestWriteSeq } : {}),
    };
  }

  /** The checkpoint of a VM on `host` (or on a file server holding the disk's share). */
  private checkpointFor(s: LabState, host: string, vm: string, checkpointId: unknown, diskId?: string): { rec: VmRecord; ck: CheckpointRecord } {
    let rec: VmRecord;
    try {
      rec = this.findVmOnHost(s, vm, host);
    } catch (e) {
      // The agent of a file server reads the disks on its shares, wherever the VM runs.
      const other = e instanceof HypervisorError && e.type === 'VmNotOnHost' ? this.findVm(s, vm) : undefined;
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

  async releaseCheckpoint(host: string, vm: string, checkpointId: string): Promise<void> {
    await this.mutate('releaseCheckpoint', async (s) => {
      const rec = this.findVmOnHost(s, vm, host);
      const ck = rec.checkpoint;
      if (!ck || ck.checkpointId !== checkpointId) return; // already released
      for (const c of ck.disks) {
        const d = this.disk(rec, c.diskId);
        const folder = this.paths.diskFolder(rec, d);
        const child = path.join(folder, c.childFile);
        if (d.chain[d.chain.length - 1] === c.childFile) {
          if (await exists(child)) await vhdx.mergeChild(child);
          d.chain.pop();
          d.generation += 1;
          await this.save(s); // the chain no longer names the child before the child goes
        }
        await fsp.rm(child, { force: true });
        d.referenceTrackingId = c.changeTrackingId;
      }
      if (ck.resumeTo && (rec.state === 'saved' || rec.state === 'paused')) rec.state = ck.resumeTo;
      delete rec.checkpoint;
    });
  }

  /** Under the lock (as openCheckpointDisk): a migration must not move or reset the files mid-read. */
  private async locked<T>(purpose: string, fn: (s: LabState) => Promise<T>): Promise<T> {
    return withLock(this.paths.lockFile, async () => fn(await this.state()), { purpose });
  }

  /** Release every backup checkpoint of the VM carrying `label`; returns their ids. */
  async releaseCheckpointsByLabel(host: string, vm: string, label: string): Promise<string[]> {
    return this.locked('releaseCheckpointsByLabel', async (s) => {
      const ck = this.findVmOnHost(s, vm, host).checkpoint;
      if (!ck || typeof label !== 'string' || ck.label !== label) return [];
      await this.releaseCheckpoint(host, vm, ck.checkpointId); // re-entrant: same lock, rereads lab.json
      return [ck.checkpointId];
    });
  }

  async changedRanges(host: string, vm: string, checkpointId: string, diskId: string, sinceId: string): Promise<ChangedRanges> {
    return this.locked('changedRanges', (s) => this.changedRangesIn(s, host, vm, checkpointId, diskId, sinceId));
  }

  private async changedRangesIn(s: LabState, host: string, vm: string, checkpointId: string, diskId: string, sinceId: string): Promise<ChangedRanges> {
    const { rec, ck } = this.checkpointFor(s, host, vm, checkpointId, diskId);
    const d = this.disk(rec, diskId);
    const c = ck.disks.find((x) => x.diskId === diskId);
    if (!c) throw failed(`backup checkpoint ${checkpointId} does not include disk ${diskId}`, { vmId: rec.vmId, diskId });
    const since = parseTrackingId(sinceId);
    if (!since) {
      const shown = typeof sinceId === 'string' ? sinceId.slice(0, 100) : String(sinceId);
      return { tracked: false, ranges: [], reason: `unknown change-tracking id ${JSON.stringify(shown)} (expected rct:<epoch>:<seq>)` };
    }
    const until = parseTrackingId(c.changeTrackingId)!;
    const r = await changesBetween(this.paths.trackingLog(rec, d), since, until);
    return r.tracked ? { tracked: true, ranges: r.ranges } : { tracked: false, ranges: [], reason: r.reason };
  }

  async openCheckpointDisk(host: string, vm: string, checkpointId: string, diskId: string): Promise<DiskReader> {
    return this.locked('openCheckpointDisk', (s) => this.openCheckpointDiskIn(s, host, vm, checkpointId, diskId));
  }

  private async openCheckpointDiskIn(s: LabState, host: string, vm: string, checkpointId: string, diskId: string): Promise<DiskReader> {
    const { rec, ck } = this.checkpointFor(s, host, vm, checkpointId, diskId);
    const c = ck.disks.find((x) => x.diskId === diskId);
    if (!c) throw failed(`backup checkpoint ${checkpointId} of VM ${rec.name} has no disk ${JSON.stringify(String(diskId).slice(0, 100))}`, { vmId: rec.vmId, diskId });
    const d = this.disk(rec, diskId);
    return vhdx.openDiskReader(path.join(this.paths.diskFolder(rec, d), c.frozenFile));
  }

  // ---- migration, replicas, deletion, import ----

  /**
   * Live-migrate a VM. Within a cluster (both hosts nodes of one cluster) ownership moves, CSV and
   * SMB storage stay and change tracking survives. Outside, local and CSV storage moves to the new
   * host's folder, the VM leaves its cluster role and change tracking starts a new epoch (lost).
   * A backup checkpoint's AVHDX moves with its disk.
   */
  async migrateVm(vm: string, toHost: string): Promise<MigrationResult> {
    return this.mutate('migrateVm', async (s) => {
      const rec = this.findVm(s, vm);
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
        const a = this.paths.diskFolder(rec, rec.disks[i]);
        const b = this.paths.diskFolder(after, after.disks[i]);
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
      await fsp.mkdir(this.paths.vmFolder(after.configLocation, after.host, after.vmId), { recursive: true });
      if (!withinCluster) {
        for (const d of after.disks) {
          d.trackingEpoch = await resetTrackingLog(this.paths.trackingLog(after, d));
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
  async enableReplication(vm: string, replicaHost: string): Promise<VmFacts> {
    return this.mutate('enableReplication', async (s) => {
      const rec = this.findVm(s, vm);
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
        const folder = this.paths.diskFolder(rep, nd);
        await fsp.mkdir(folder, { recursive: true });
        await vhdx.copyDiskContent(this.paths.topPath(rec, d), path.join(folder, nd.fileName));
        nd.trackingEpoch = await resetTrackingLog(this.paths.trackingLog(rep, nd));
        rep.disks.push(nd);
      }
      rec.replica = { role: 'primary', replicaServer: replicaHost };
      s.vms[replicaId] = rep;
      return this.facts(s, rep);
    });
  }

  /** Delete a VM and its files. */
  async deleteVm(vm: string): Promise<void> {
    await this.mutate('deleteVm', async (s) => {
      const rec = this.findVm(s, vm);
      await this.removeVmFiles(rec);
      delete s.vms[rec.vmId];
    });
  }

  private async removeVmFiles(rec: VmRecord): Promise<void> {
    const folders = new Set<string>();
    for (const d of rec.disks) {
      const folder = this.paths.diskFolder(rec, d);
      folders.add(folder);
      for (const f of [d.fileName, ...d.chain, trackingLogName(d.fileName)]) await fsp.rm(path.join(folder, f), { force: true });
    }
    folders.add(this.paths.vmFolder(rec.configLocation, rec.host, rec.vmId));
    for (const f of folders) await fsp.rmdir(f).catch(() => undefined);
  }

  /**
   * Recreate a VM from a backed-up configuration and restored VHDX files (the VM is off; start it to
   * "boot" it). With `replace`, the VM of the same id is replaced in place (it must be off).
   * Repeating a successful import (its files moved in already) returns the imported VM.
   */
  async importVm(opts: LabImportOptions): Promise<VmFacts> {
    const cfg = parseConfig(opts?.config);
    if (!Array.isArray(opts.disks)) throw new LabError('importVm needs the restored disk files');
    const vmId = opts.vmId ?? cfg.vmId;
    if (!isSafeName(vmId)) throw new LabError(`bad VM id ${JSON.stringify(vmId)}`);
    // A retry after a successful import (files already moved into place) returns the imported VM.
    if (!opts.copy && opts.disks.length > 0 && typeof opts.host === 'string') {
      const s0 = await this.state();
      const done = Object.prototype.hasOwnProperty.call(s0.vms, vmId) ? s0.vms[vmId] : undefined;
      const sameDisks = done && done.disks.map((d) => d.diskId).join('\0') === cfg.disks.map((d) => d.diskId).join('\0');
      if (done && sameDisks && done.host === opts.host) {
        const gone = await Promise.all(opts.disks.map(async (d) => typeof d?.path === 'string' && !(await exists(d.path))));
        if (gone.every(Boolean)) return this.facts(s0, done);
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
    return this.mutate('importVm', async (s) => {
      if (!isSafeName(opts.host) || !s.hosts[opts.host]) throw new LabError(`no lab host ${JSON.stringify(opts.host)}`);
      const existing = s.vms[vmId];
      if (existing && !opts.replace) throw new LabError(`VM id ${vmId} exists already (restore to the original place needs replace)`);
      if (existing && existing.state !== 'off') throw new LabError(`VM ${existing.name} must be off to be replaced, it is ${existing.state}`);
      const reachable = (loc: DiskLocation): DiskLocation =>
        loc.kind === 'csv' && s.hosts[opts.host].cluster !== loc.cluster ? { kind: 'local' } : loc;
      const override = opts.storage !== undefined ? this.resolveStorage(s, opts.host, opts.storage) : undefined;
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
      if (existing) await this.removeVmFiles(existing);
      for (const d of rec.disks) {
        const folder = this.paths.diskFolder(rec, d);
        await fsp.mkdir(folder, { recursive: true });
        const target = path.join(folder, d.fileName);
        if (!existing && (await exists(target))) throw new LabError(`${target} exists already`);
        if (opts.copy) await fsp.copyFile(given.get(d.diskId)!, target);
        else await moveFile(given.get(d.diskId)!, target);
        d.trackingEpoch = await resetTrackingLog(this.paths.trackingLog(rec, d));
      }
      await fsp.mkdir(this.paths.vmFolder(rec.configLocation, rec.host, rec.vmId), { recursive: true });
      s.vms[vmId] = rec;
      return this.facts(s, rec);
    });
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function moveFile(from: string, to: string): Promise<void> {
  try {
    await fsp.rename(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    await fsp.copyFile(from, to);
    await fsp.rm(from);
  }
}

function parseConfig(x: unknown): LabVmConfig {
  const bad = (what: string) => new LabError(`VM configuration is not a lab VM configuration: ${what}`);
  if (!x || typeof x !== 'object') throw bad('not an object');
  const c = x as LabVmConfig;
  if (c.format !== 'hvprotect-lab-vm/1') throw bad(`format ${JSON.stringify(c.format)}`);
  if (!isSafeName(c.vmId)) throw bad('vmId');
  if (typeof c.name !== 'string' || !c.name) throw bad('name');
  if (typeof c.guestOs !== 'string' || !['windows', 'linux', 'other'].includes(c.guestOsFamily)) throw bad('guest OS');
  if (!c.integrationServices?.backup || typeof c.integrationServices.backup.enabled !== 'boolean') throw bad('integration services');
  if (!Array.isArray(c.volumes)) throw bad('volumes');
  if (!c.replica || !REPLICA_ROLES.includes(c.replica.role)) throw bad('replica');
  if (!c.configLocation || !['local', 'csv', 'smb', 'folder'].includes(c.configLocation.kind)) throw bad('configLocation');
  if (!Array.isArray(c.disks)) throw bad('disks');
  const locOk = (l: DiskLocation | undefined): boolean =>
    !!l &&
    (l.kind === 'local' ||
      (l.kind === 'csv' && isSafeName(l.cluster)) ||
      (l.kind === 'smb' && isSafeName(l.fileServer) && isSafeName(l.share)) ||
      (l.kind === 'folder' && typeof l.folder === 'string' && path.isAbsolute(l.folder)));
  if (!locOk(c.configLocation)) throw bad('configLocation');
  const ids = new Set<string>();
  for (const d of c.disks) {
    if (!d || !isSafeName(d.diskId) || ids.has(d.diskId)) throw bad(`disk id ${JSON.stringify(d?.diskId)}`);
    ids.add(d.diskId);
    if (!Number.isSafeInteger(d.virtualSize) || d.virtualSize <= 0 || d.virtualSize > MAX_DISK_SIZE) throw bad(`disk ${d.diskId} size`);
    if (d.controller !== 'ide' && d.controller !== 'scsi') throw bad(`disk ${d.diskId} controller`);
    if (!locOk(d.location)) throw bad(`disk ${d.diskId} location`);
  }
  if (c.clustered && (!isSafeName(c.clustered.cluster) || !GROUP_STATES.includes(c.clustered.groupState))) throw bad('clustered');
  return structuredClone(c);
}

/** Child entry when running from TypeScript sources (jest): transpile .ts on the fly with @swc/core. */
const TS_ENTRY = `
const fs = require('fs');
const swc = require(process.env.HVP_LAB_SWC);
require.extensions['.ts'] = (m, file) => {
  const out = swc.transformSync(fs.readFileSync(file, 'utf8'), {
    filename: file, sourceMaps: 'inline',
    jsc: { target: 'es2022', parser: { syntax: 'typescript' } }, module: { type: 'commonjs' },
  });
  m._compile(out.code, file);
};
const script = process.argv[1];
process.argv.splice(1, 1);
require(script).main(process.argv.slice(1)).then((code) => process.exit(code), (e) => { console.error(e); process.exit(1); });
`;

