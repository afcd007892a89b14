// A lab VM's configuration: creating VMs with real VHDX disks, changing their properties, and the
// facts (VmFacts) and configuration (LabVmConfig) the adapter reports and a restore takes back.
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { ClusterGroupState, GuestVolume, ReplicaRole, VmFacts, VmState } from '../types';
import { resetTrackingLog } from './change-tracking';
import { REGION_SIZE, initialRegion, type InitialContent } from './disk-content';
import { isSafeName, trackingLogName, type DiskLocation, type DiskRecord, type LabState, type VmRecord } from './state';
import { LabError, exists, type LabStore } from './store';
import * as vhdx from './vhdx-io';

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
  /** A raw disk image (no larger than the disk) the disk starts as, instead of `content`; its all-zero MiBs are left unallocated. */
  image?: string;
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

const DEFAULT_GUEST = { guestOs: 'Windows Server 2019 Datacenter', guestOsFamily: 'windows' as const, guestOsVersion: '10.0.17763' };
const VM_STATES: VmState[] = ['running', 'paused', 'saved', 'off'];
const GROUP_STATES: ClusterGroupState[] = ['online', 'offline', 'partial', 'failed'];
const REPLICA_ROLES: ReplicaRole[] = ['none', 'primary', 'replica'];
const MAX_DISK_SIZE = 64 * 2 ** 40;

function locationKind(loc: DiskLocation): 'local' | 'csv' | 'smb' {
  return loc.kind === 'folder' ? 'local' : loc.kind;
}

export function facts(lab: LabStore, s: LabState, vm: VmRecord): VmFacts {
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
      path: lab.paths.topPath(vm, d),
      basePath: lab.paths.basePath(vm, d),
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
    configPath: lab.paths.vmFolder(vm.configLocation, vm.host, vm.vmId),
    config: labVmConfig(vm) as unknown as Record<string, unknown>,
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

export function labVmConfig(vm: VmRecord): LabVmConfig {
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

export function resolveStorage(s: LabState, host: string, spec: StorageSpec | undefined): DiskLocation {
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

function checkProps(p: {
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
export async function createVm(lab: LabStore, spec: LabVmSpec): Promise<VmFacts> {
  if (!spec || typeof spec !== 'object') throw new LabError('createVm needs a spec');
  const vmId = spec.vmId ?? randomUUID();
  if (!isSafeName(vmId)) throw new LabError(`bad VM id ${JSON.stringify(vmId)}`);
  checkProps({ name: spec.name, state: spec.state, guestOsFamily: spec.guestOsFamily, volumes: spec.volumes, replica: spec.replica, groupState: spec.clusterGroupState });
  if (!Array.isArray(spec.disks)) throw new LabError('createVm needs a list of disks');

  // Validate against the current state and lay out the disks; files are made outside the lock.
  const s0 = await lab.state();
  if (!isSafeName(spec.host) || !s0.hosts[spec.host]) throw new LabError(`no lab host ${JSON.stringify(spec.host)}`);
  if (s0.vms[vmId]) throw new LabError(`VM id ${vmId} exists already`);
  const vmStorage = resolveStorage(s0, spec.host, spec.storage);
  const seen = new Set<string>();
  const disks: (DiskRecord & { content?: InitialContent; image?: string; blockSize?: number; logicalSectorSize?: 512 | 4096 })[] = spec.disks.map((d, i) => {
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
      location: d.storage !== undefined ? resolveStorage(s0, spec.host, d.storage) : vmStorage,
      fileName: `${diskId}.vhdx`,
      chain: [],
      generation: 1,
      trackingEpoch: '',
      content: d.content,
      image: d.image,
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
      const folder = lab.paths.vmFolder(d.location, rec.host, vmId);
      await fsp.mkdir(folder, { recursive: true });
      const file = path.join(folder, d.fileName);
      if (await exists(file)) throw new LabError(`${file} exists already`);
      made.push(file);
      await vhdx.createDisk(file, { virtualSize: d.virtualSize, blockSize: d.blockSize, logicalSectorSize: d.logicalSectorSize });
      if (d.image !== undefined) await writeImage(file, d.image, d.virtualSize);
      else if (d.content && d.content.kind !== 'zeros') await writeInitialContent(file, d.content, d.virtualSize);
      made.push(path.join(folder, trackingLogName(d.fileName)));
      d.trackingEpoch = await resetTrackingLog(path.join(folder, trackingLogName(d.fileName)));
      const { content: _c, image: _i, blockSize: _b, logicalSectorSize: _l, ...record } = d;
      rec.disks.push(record);
    }
    await fsp.mkdir(lab.paths.vmFolder(rec.configLocation, rec.host, vmId), { recursive: true });
    return await lab.mutate('createVm', async (s) => {
      if (!s.hosts[rec.host]) throw new LabError(`no lab host ${JSON.stringify(rec.host)}`);
      if (s.vms[vmId]) throw new LabError(`VM id ${vmId} exists already`);
      s.vms[vmId] = rec;
      return facts(lab, s, rec);
    });
  } catch (e) {
    for (const f of made) await fsp.rm(f, { force: true });
    throw e;
  }
}

async function writeInitialContent(file: string, content: InitialContent, virtualSize: number): Promise<void> {
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

async function writeImage(file: string, image: string, virtualSize: number): Promise<void> {
  const src = await fsp.open(image, 'r');
  const disk = await vhdx.openDisk(file, true);
  try {
    const size = (await src.stat()).size;
    if (size > virtualSize) throw new LabError(`image ${image} (${size} bytes) is larger than the disk (${virtualSize} bytes)`);
    const buf = Buffer.alloc(REGION_SIZE);
    const zeros = Buffer.alloc(REGION_SIZE);
    for (let o = 0; o < size; o += REGION_SIZE) {
      const { bytesRead } = await src.read(buf, 0, Math.min(REGION_SIZE, size - o), o);
      const data = buf.subarray(0, bytesRead);
      if (!data.equals(zeros.subarray(0, bytesRead))) await disk.write(o, Buffer.from(data));
    }
    await disk.flush();
  } finally {
    await disk.close();
    await src.close();
  }
}

export async function setVmProperties(lab: LabStore, vm: string, patch: LabVmPatch): Promise<VmFacts> {
  if (!patch || typeof patch !== 'object') throw new LabError('setVmProperties needs a patch object');
  const groupState = typeof patch.clustered === 'object' && patch.clustered ? patch.clustered.groupState : undefined;
  checkProps({ name: patch.name, state: patch.state, guestOsFamily: patch.guestOsFamily, volumes: patch.volumes, replica: patch.replica, groupState });
  return lab.mutate('setVmProperties', async (s) => {
    const rec = lab.findVm(s, vm);
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
    return facts(lab, s, rec);
  });
}

export function parseConfig(x: unknown): LabVmConfig {
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
