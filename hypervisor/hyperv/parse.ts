// From what the scripts print (ConvertTo-Json of Hyper-V objects) to the adapter's types.
//
// ConvertTo-Json is loose in ways this file absorbs:
// - one item where an array was meant (a pipeline of one object is that object), and on Windows
//   PowerShell 5.1 sometimes {"value":[...],"Count":n} for an array;
// - enums as numbers (Get-VM's State is 2 for Running unless cast to string) or names;
// - dates as "\/Date(1700000000000)\/" (5.1) or ISO strings (PowerShell 7);
// - $null, "" and missing properties interchangeably.

import type {
  ClusterGroupState,
  GuestVolume,
  ReplicaRole,
  StorageKind,
  VmDisk,
  VmFacts,
  VmState,
  VmSummary,
} from '../types';

type Json = Record<string, unknown>;

export function asArray<T = Json>(v: unknown): T[] {
  if (v === null || v === undefined || v === '') return [];
  if (Array.isArray(v)) return v as T[];
  if (typeof v === 'object' && Array.isArray((v as Json).value) && 'Count' in (v as Json)) return (v as Json).value as T[];
  return [v as T];
}

export function str(v: unknown): string | undefined {
  if (v === null || v === undefined) return undefined;
  const s = String(v);
  return s.length ? s : undefined;
}

export function num(v: unknown): number | undefined {
  if (v === null || v === undefined || v === '') return undefined;
  const n = typeof v === 'number' ? v : Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/** ISO string from "\/Date(ms)\/", "/Date(ms+0100)/" or an ISO/other date string. */
export function isoDate(v: unknown): string {
  const s = str(v);
  if (!s) return new Date(0).toISOString();
  const m = /Date\((-?\d+)(?:[+-]\d{4})?\)/.exec(s);
  if (m) return new Date(Number(m[1])).toISOString();
  const d = new Date(s);
  return Number.isNaN(d.getTime()) ? s : d.toISOString();
}

// Microsoft.HyperV.PowerShell.VMState (the numbers ConvertTo-Json writes for Get-VM's State).
const VM_STATE_NUMBERS: Record<number, string> = {
  1: 'Other', 2: 'Running', 3: 'Off', 4: 'Stopping', 6: 'Saved', 9: 'Paused', 10: 'Starting', 11: 'Reset',
  32773: 'Saving', 32776: 'Pausing', 32777: 'Resuming', 32779: 'FastSaved', 32780: 'FastSaving',
  32781: 'ForceShutdown', 32782: 'ForceReboot', 32783: 'Hibernated', 32784: 'ComponentServicing',
};

/**
 * Get-VM's State as the four states backups care about. Transitional states count as where they
 * are heading or still are: Saving → saved, Pausing → paused, Stopping → off, Starting → running.
 */
export function vmState(v: unknown): VmState {
  let name = typeof v === 'number' ? VM_STATE_NUMBERS[v] ?? 'Other' : String(v ?? 'Other');
  name = name.replace(/Critical$/, '');
  switch (name) {
    case 'Running':
    case 'Starting':
    case 'Resuming':
    case 'Reset':
    case 'ForceReboot':
    case 'ComponentServicing':
      return 'running';
    case 'Paused':
    case 'Pausing':
      return 'paused';
    case 'Saved':
    case 'Saving':
    case 'FastSaved':
    case 'FastSaving':
    case 'Hibernated':
      return 'saved';
    default:
      return 'off';
  }
}

/** Storage kind from a disk path: CSV (C:\ClusterStorage\…), SMB (\\server\share\…) or local. */
export function storageOf(path: string): { storage: StorageKind; fileServer?: string } {
  const unc = /^\\\\\?\\UNC\\([^\\]+)\\/i.exec(path) ?? (/^\\\\\?\\/.test(path) ? null : /^\\\\([^\\?.][^\\]*)\\/.exec(path));
  if (unc) return { storage: 'smb', fileServer: unc[1] };
  const local = path.replace(/^\\\\\?\\/, '');
  if (/^[a-z]:\\ClusterStorage\\/i.test(local)) return { storage: 'csv' };
  return { storage: 'local' };
}

// FailoverClusters ClusterGroupState: Online 0, Offline 1, Failed 2, PartialOnline 3, Pending 4, Unknown -1.
export function clusterGroupState(v: unknown): ClusterGroupState {
  const names: Record<number, string> = { 0: 'Online', 1: 'Offline', 2: 'Failed', 3: 'PartialOnline', 4: 'Pending' };
  const name = typeof v === 'number' ? names[v] ?? 'Unknown' : String(v ?? 'Unknown');
  switch (name) {
    case 'Online':
      return 'online';
    case 'PartialOnline':
    case 'Pending':
      return 'partial';
    case 'Failed':
      return 'failed';
    default:
      return 'offline';
  }
}

// Microsoft.HyperV.PowerShell.VMReplicationMode: None 0, Primary 1, Replica 2, ExtendedReplica 3.
export function replicaRole(v: unknown): ReplicaRole {
  const names: Record<number, string> = { 0: 'None', 1: 'Primary', 2: 'Replica', 3: 'ExtendedReplica' };
  const name = typeof v === 'number' ? names[v] ?? 'None' : String(v ?? 'None');
  if (name === 'Primary') return 'primary';
  if (name === 'Replica' || name === 'ExtendedReplica') return 'replica';
  return 'none';
}

// Microsoft.HyperV.PowerShell.SnapshotType: Standard 0, Recovery 1, Planned 2, Missing 3, Replica 4…
export function isRecoverySnapshot(v: unknown): boolean {
  return v === 1 || v === 'Recovery';
}

// Microsoft.HyperV.PowerShell.ControllerType: IDE 0, SCSI 1 (PMEM 2 on newer hosts).
export function controllerOf(v: unknown): 'ide' | 'scsi' {
  return v === 0 || String(v).toUpperCase() === 'IDE' ? 'ide' : 'scsi';
}

export function diskIdOf(d: Json): string {
  return `${controllerOf(d.ControllerType)}${num(d.ControllerNumber) ?? 0}-${num(d.ControllerLocation) ?? 0}`;
}

export function guestFamily(kvp: Json): 'windows' | 'linux' | 'other' {
  const name = str(kvp.OSName) ?? '';
  // OSPlatformId 2 = VER_PLATFORM_WIN32_NT.
  if (/windows/i.test(name) || str(kvp.OSPlatformId) === '2') return 'windows';
  if (/linux|ubuntu|debian|red ?hat|rhel|centos|suse|sles|fedora|rocky|alma|oracle|photon|mariner/i.test(name)) return 'linux';
  return 'other';
}

// Integration services by the class id that ends their Id ("Microsoft:<VM id>\\<class id>"), which
// no host language changes; the English names only for output that has no Id.
export const INTEGRATION_SERVICE_IDS = { backup: '35fa2e29-ea23-4236-96ae-3a6ebacba440', heartbeat: '57164f39-9115-4e78-ab55-382f3bd5422d' } as const;

function integration(list: Json[], classId: string, names: string[]): { enabled: boolean; responding: boolean } | undefined {
  const byId = list.find((s) => String(s.Id ?? '').toLowerCase().endsWith(classId));
  const svc = byId ?? list.find((s) => !str(s.Id) && names.some((n) => String(s.Name ?? '').toLowerCase() === n.toLowerCase()));
  if (!svc) return undefined;
  const op = svc.PrimaryOperationalStatus;
  const responding = op === 2 || String(op).toLowerCase() === 'ok' || String(svc.PrimaryStatusDescription ?? '').toUpperCase() === 'OK';
  return { enabled: svc.Enabled === true || svc.Enabled === 'True', responding: responding && svc.Enabled !== false };
}

/**
 * `hostName` is the agent's name for this host (its task queue is named by it), used rather than
 * Get-VM's ComputerName, which may differ in case or form; configure agents of cluster nodes with
 * the node names so that VmNotOnHost's owner node names an agent.
 */
export function parseVmSummaries(result: Json, hostName: string): VmSummary[] {
  const cluster = str(result.cluster);
  return asArray(result.vms).map((v) => ({
    vmId: String(v.Id).toLowerCase(),
    name: String(v.Name),
    host: hostName,
    state: vmState(v.State),
    ...(v.IsClustered === true && cluster ? { cluster } : {}),
  }));
}

export interface ReferencePointJson {
  InstanceID: string;
  ReferencePointType?: number;
  VirtualDiskIdentifiers: string[];
  ResilientChangeTrackingIdentifiers: string[];
}

export function parseReferencePoint(rp: Json | undefined | null): ReferencePointJson | undefined {
  if (!rp || typeof rp !== 'object') return undefined;
  return {
    InstanceID: String(rp.InstanceID ?? ''),
    ReferencePointType: num(rp.ReferencePointType),
    VirtualDiskIdentifiers: asArray<unknown>(rp.VirtualDiskIdentifiers).map(String),
    ResilientChangeTrackingIdentifiers: asArray<unknown>(rp.ResilientChangeTrackingIdentifiers).map(String),
  };
}

const samePath = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();

/**
 * RCT ids of a reference point per diskId. A reference point names disks by the WMI InstanceID of
 * their Msvm_StorageAllocationSettingData; that gives the file, the file gives the drive, the drive
 * its controller location. Disks that cannot be matched are left out (their next backup reads all).
 */
export function rctIdsByDisk(rp: ReferencePointJson, diskInstances: Json[], drives: Json[]): Map<string, string> {
  const out = new Map<string, string>();
  rp.VirtualDiskIdentifiers.forEach((instanceId, i) => {
    const rct = rp.ResilientChangeTrackingIdentifiers[i];
    if (!rct) return;
    const inst = diskInstances.find((d) => String(d.InstanceID) === instanceId);
    const path = inst && str(inst.Path);
    if (!path) return;
    const drive = drives.find((d) => str(d.Path) && samePath(String(d.Path), path));
    if (drive) out.set(diskIdOf(drive), rct);
  });
  return out;
}

export interface InspectOptions {
  /** The agent's name for this host (see parseVmSummaries). */
  hostName: string;
  /** Guest volumes when the caller knows better than the host-side approximation. */
  guestVolumes?: (facts: Omit<VmFacts, 'volumes'>) => GuestVolume[] | undefined;
  /** The newest reference point this adapter made of the VM (from the RCT store). */
  lastReferencePoint?: { referencePointId?: string; disks: Record<string, string> };
}

export function parseInspect(result: Json, opts: InspectOptions): VmFacts {
  const vm = (result.vm ?? {}) as Json;
  const kvp = (result.kvp && typeof result.kvp === 'object' ? result.kvp : {}) as Json;
  const drives = asArray(result.disks);
  const diskInstances = asArray(result.diskInstances);
  const family = guestFamily(kvp);

  // Change tracking: the RCT ids of the newest reference point this adapter made, while it exists.
  // Other products' reference points on the same VM are never taken for ours.
  const existing = new Set(asArray(result.referencePoints).map((r) => parseReferencePoint(r)?.InstanceID));
  const last = opts.lastReferencePoint;
  const rctByDisk = new Map<string, string>(last?.referencePointId && existing.has(last.referencePointId) ? Object.entries(last.disks) : []);

  const disks: VmDisk[] = drives.map((d) => {
    const chain = asArray(d.Chain);
    const passthrough = num(d.DiskNumber) !== undefined || !str(d.Path);
    const path = str(d.Path) ?? '';
    const base = chain.length ? chain[chain.length - 1] : undefined;
    const basePath = (base && str(base.Path)) ?? path;
    const diskId = diskIdOf(d);
    const loc = passthrough ? { storage: 'local' as StorageKind } : storageOf(basePath);
    const disk: VmDisk = {
      diskId,
      path,
      basePath,
      virtualSize: num(chain[0]?.Size) ?? 0,
      storage: loc.storage,
      passthrough,
      controller: controllerOf(d.ControllerType),
    };
    if (loc.fileServer) disk.fileServer = loc.fileServer;
    const rct = rctByDisk.get(diskId);
    if (rct) disk.changeTrackingId = rct;
    return disk;
  });

  const is = asArray(result.integrationServices);
  const backup = integration(is, INTEGRATION_SERVICE_IDS.backup, ['VSS', 'Backup (volume shadow copy)']) ?? { enabled: false, responding: false };
  const heartbeat = integration(is, INTEGRATION_SERVICE_IDS.heartbeat, ['Heartbeat']);

  const c = result.cluster as Json | null | undefined;
  const repl = (result.replication ?? {}) as Json;
  const role = replicaRole(repl.Mode ?? vm.ReplicationMode);

  const checkpoints = asArray(result.snapshots).map((s) => ({
    checkpointId: String(s.Id).toLowerCase(),
    createdAt: isoDate(s.CreationTime),
    kind: isRecoverySnapshot(s.SnapshotType) ? ('backup' as const) : ('standard' as const),
    ...(isRecoverySnapshot(s.SnapshotType) && str(s.Name) ? { label: str(s.Name) } : {}),
  }));

  const guestOs = str(kvp.OSName) ?? 'unknown';
  const unknownGuestFacts: string[] = [];
  if (!str(kvp.OSName)) {
    unknownGuestFacts.push('guest OS: the VM reports none over KVP (Data Exchange off, the VM not running, or no integration services)');
  }
  const facts: Omit<VmFacts, 'volumes'> = {
    vmId: String(vm.Id).toLowerCase(),
    name: String(vm.Name),
    host: opts.hostName,
    state: vmState(vm.State),
    guestOs,
    guestOsFamily: family,
    ...(str(kvp.OSVersion) && family === 'windows' ? { guestOsVersion: str(kvp.OSVersion) } : {}),
    integrationServices: { backup, ...(heartbeat ? { heartbeat } : {}) },
    disks,
    ...(c && typeof c === 'object'
      ? {
          cluster: {
            name: String(c.Name ?? ''),
            groupState: clusterGroupState(c.GroupState),
            ownerNode: String(c.OwnerNode ?? ''),
            nodes: asArray<unknown>(c.Nodes).map(String),
          },
        }
      : {}),
    replica: {
      role,
      ...(str(repl.PrimaryServer) ? { primaryServer: str(repl.PrimaryServer) } : {}),
      ...(str(repl.ReplicaServer) ? { replicaServer: str(repl.ReplicaServer) } : {}),
    },
    configPath: str(vm.ConfigurationLocation) ?? str(vm.Path) ?? '',
    config: {
      hypervisor: 'hyperv',
      generation: num(vm.Generation),
      version: str(vm.Version),
      processorCount: num(vm.ProcessorCount),
      memoryStartupBytes: num(vm.MemoryStartup),
      path: str(vm.Path),
      drives: drives.map((d) => ({ diskId: diskIdOf(d), controller: controllerOf(d.ControllerType), number: num(d.ControllerNumber), location: num(d.ControllerLocation), path: str(d.Path) })),
    },
    checkpoints,
    // A replica has no running guest: its checkpoint is crash-consistent as replication left it, never a production checkpoint.
    ...(role === 'replica' ? {} : { checkpointConsistency: 'production' as const }),
  };
  const unsupported = unsupportedAtHostLevel(vm, drives, disks);
  if (unsupported.length) facts.unsupported = unsupported;
  const known = opts.guestVolumes?.(facts);
  if (!known) unknownGuestFacts.push('guest volumes: file systems, dynamic disks and shadow storage are inside the guest and not visible from the host');
  return { ...facts, volumes: known ?? [], ...(unknownGuestFacts.length ? { unknownGuestFacts } : {}) };
}

/** The lowest VM configuration version with resilient change tracking (Windows Server 2016 is 8.0). */
const RCT_MIN_VERSION = [6, 2];

/** What host-level backup cannot do on this VM, named at inspect with what to do about it. */
export function unsupportedAtHostLevel(vm: Json, drives: Json[], disks: VmDisk[]): NonNullable<VmFacts['unsupported']> {
  const out: NonNullable<VmFacts['unsupported']> = [];
  const version = str(vm.Version);
  const [major = 0, minor = 0] = (version ?? '').split('.').map((x) => Number.parseInt(x, 10) || 0);
  if (version && (major < RCT_MIN_VERSION[0] || (major === RCT_MIN_VERSION[0] && minor < RCT_MIN_VERSION[1]))) {
    out.push({
      what: `VM configuration version ${version} has no resilient change tracking or recovery checkpoints (6.2 or later needed)`,
      remedy: `upgrade it with Update-VMVersion -Name '${str(vm.Name) ?? ''}' while the VM is off (it can then no longer run on an older host)`,
    });
  }
  drives.forEach((d, i) => {
    const disk = disks[i];
    if (!disk) return;
    if (disk.passthrough) {
      out.push({ diskId: disk.diskId, what: `disk ${disk.diskId} is a passthrough (physical) disk, which a host-level checkpoint cannot include`, remedy: 'protect this VM with guest-level protection (an agent inside the guest)' });
      return;
    }
    const chain = asArray(d.Chain);
    const base = chain.length ? chain[chain.length - 1] : undefined;
    const format = str(base?.VhdFormat) ?? '';
    if (/^vhd$/i.test(format) || (!format && /\.vhd$/i.test(disk.basePath))) {
      out.push({
        diskId: disk.diskId,
        what: `disk ${disk.diskId} (${disk.basePath}) is a VHD file: resilient change tracking needs VHDX`,
        remedy: `with the VM off, Convert-VHD -Path '${disk.basePath}' -DestinationPath '${disk.basePath.replace(/\.vhd$/i, '.vhdx')}' and attach the VHDX in its place`,
      });
    }
  });
  return out;
}

export interface CheckpointDiskJson {
  diskId: string;
  path: string;
  virtualSize: number;
  passthrough: boolean;
  /** The frozen file's own most recent RCT id (GetVirtualDiskInformation), when it has one. */
  rctId?: string;
  /** Why there is no RCT id (tracking off, the query failed). */
  rctProblem?: string;
  /** The VHDX's virtual disk id (Get-VHD DiskIdentifier), lower case without braces. */
  virtualDiskId?: string;
}

/** What identifies a disk's content at a reference point: a resized or replaced disk differs. */
export interface DiskIdentity {
  virtualSize: number;
  path: string;
  virtualDiskId?: string;
}

/**
 * Why a disk is not the one a reference point recorded, or undefined when it is: its size differs
 * (resized: RCT cannot say what changed), its virtual disk id differs (another VHDX in its place),
 * or, when either side lacks the id, its file differs (Windows paths compare case-insensitively).
 */
export function diskIdentityChange(before: DiskIdentity, now: DiskIdentity): string | undefined {
  if (before.virtualSize > 0 && now.virtualSize > 0 && before.virtualSize !== now.virtualSize) {
    return `resized since the reference point (${before.virtualSize} → ${now.virtualSize} bytes)`;
  }
  if (before.virtualDiskId && now.virtualDiskId) {
    return before.virtualDiskId === now.virtualDiskId ? undefined : `replaced since the reference point (virtual disk id ${before.virtualDiskId} → ${now.virtualDiskId})`;
  }
  const norm = (p: string) => p.replace(/^\\\\\?\\(UNC\\)?/i, (_m, unc: string | undefined) => (unc ? '\\\\' : '')).replace(/\//g, '\\').toLowerCase();
  if (before.path && now.path && norm(before.path) !== norm(now.path)) return `replaced since the reference point (file ${before.path} → ${now.path})`;
  return undefined;
}

export function parseCheckpointDisks(v: unknown): CheckpointDiskJson[] {
  return asArray(v).map((d) => {
    const rct = (d.Rct ?? undefined) as Json | undefined;
    const rctId = rct && rct.Enabled === true && !rct.Error ? str(rct.MostRecentId) : undefined;
    const virtualDiskId = str(d.DiskIdentifier)?.replace(/[{}]/g, '').toLowerCase();
    return {
      diskId: diskIdOf(d),
      path: str(d.Path) ?? '',
      virtualSize: num(d.Size) ?? 0,
      passthrough: num(d.DiskNumber) !== undefined || !str(d.Path),
      ...(rctId ? { rctId } : {}),
      ...(virtualDiskId ? { virtualDiskId } : {}),
      ...(rct && !rctId ? { rctProblem: str(rct.Error) ?? (rct.Enabled === false ? 'change tracking is off on this disk' : 'no RCT id') } : {}),
    };
  });
}

/** Sorted, merged, clipped to [0, limit). */
export function mergeRanges(ranges: { offset: number; length: number }[], limit: number): { offset: number; length: number }[] {
  const sorted = ranges
    .map((r) => ({ start: Math.max(0, r.offset), end: Math.min(limit, r.offset + r.length) }))
    .filter((r) => r.end > r.start)
    .sort((a, b) => a.start - b.start);
  const out: { offset: number; length: number }[] = [];
  let cur: { start: number; end: number } | undefined;
  for (const r of sorted) {
    if (cur && r.start <= cur.end) cur.end = Math.max(cur.end, r.end);
    else {
      if (cur) out.push({ offset: cur.start, length: cur.end - cur.start });
      cur = { ...r };
    }
  }
  if (cur) out.push({ offset: cur.start, length: cur.end - cur.start });
  return out;
}
