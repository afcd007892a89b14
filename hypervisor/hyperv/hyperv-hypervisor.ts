// The Hyper-V adapter: HypervisorAdapter over PowerShell (Hyper-V module cmdlets) and WMI
// (root\virtualization\v2) for backup checkpoints and Resilient Change Tracking (RCT).
// What each operation runs is in scripts.ts; how output becomes facts is in parse.ts.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  HypervisorError,
  type BackupCheckpoint,
  type BackupMode,
  type ChangedRanges,
  type DiskReader,
  type GuestVolume,
  type HypervisorAdapter,
  type OfflineMethod,
  type VmFacts,
  type VmSummary,
} from '../types';
import { openVhdx } from '../../vhdx';
import { runPowerShell } from './powershell';
import { CheckpointRecords, identities, scriptFilePath, type CheckpointRecord } from './checkpoint-record';
import { RctStore, type RctStoreEntry } from './rct-store';
import { buildScript, type ScriptOp } from './scripts';
import {
  asArray,
  diskIdentityChange,
  isoDate,
  mergeRanges,
  num,
  parseCheckpointDisks,
  parseInspect,
  parseReferencePoint,
  parseVmSummaries,
  rctIdsByDisk,
  str,
  type CheckpointDiskJson,
  type ReferencePointJson,
} from './parse';

/**
 * A failed GetVirtualDiskChanges, named. Return values of Msvm_ImageManagementService methods:
 * 32768 Failed, 32769 Access Denied, 32770 Not Supported, 32771 Status is unknown, 32772 Timeout,
 * 32773 Invalid parameter, 32774 System is in use, 32775 Invalid state, 32776 Incorrect data type,
 * 32777 System is not available, 32778 Out of memory, 32779 File not found. Transient: 32772,
 * 32774, 32777 and a job past its time. A reset of change tracking: 32773 (the disk does not know
 * the id: tracking was reset, the disk replaced) and a job that ended failed. Anything else is an
 * error to report, never a silent full read.
 */
/**
 * An application-consistent CreateSnapshot that failed inside the guest: the job ended in error
 * (VSS writers or the Linux freeze failed, the backup integration service did not answer). A return
 * value, a timeout of our process, or a failure before CreateSnapshot is no reason to try again.
 */
export function isGuestConsistencyFailure(e: unknown): boolean {
  if (!(e instanceof HypervisorError) || e.type !== 'HypervisorCommandFailed') return false;
  return e.details.method === 'CreateSnapshot' && e.details.jobState !== undefined && e.details.timedOut !== true;
}

export function classifyRctFailure(failed: Record<string, unknown>): { transient: boolean; reset: boolean; what: string; returnValue?: number } {
  const details = (failed.details ?? {}) as Record<string, unknown>;
  const returnValue = num(details.returnValue);
  const jobState = num(details.jobState);
  const names: Record<number, string> = {
    32768: 'failed', 32769: 'access denied', 32770: 'not supported', 32771: 'status unknown', 32772: 'timeout',
    32773: 'invalid parameter', 32774: 'system is in use', 32775: 'invalid state', 32776: 'incorrect data type',
    32777: 'system is not available', 32778: 'out of memory', 32779: 'file not found',
  };
  if (details.jobTimedOut === true) return { transient: true, reset: false, what: 'job timed out' };
  if (returnValue !== undefined) {
    const what = `return value ${returnValue}${names[returnValue] ? ` ${names[returnValue]}` : ''}`;
    return { transient: [32772, 32774, 32777].includes(returnValue), reset: returnValue === 32773, what, returnValue };
  }
  if (jobState !== undefined) return { transient: false, reset: true, what: `job ended in state ${jobState}, error code ${num(details.errorCode) ?? 'unknown'}` };
  return { transient: false, reset: false, what: 'no return value' };
}

/** What `openVhdx(path)` of the project's VHDX library returns (sync or async members). */
export interface VhdxImage {
  readonly virtualSize: number;
  read(offset: number, length: number): Promise<Buffer> | Buffer;
  /** Fills `target` from `offset` (the project's VhdxDisk has it): reused memory, see DiskReader.readInto. */
  readInto?(target: Buffer, offset: number): Promise<void> | void;
  allocatedRanges(): Promise<{ offset: number; length: number }[]> | { offset: number; length: number }[];
  close(): Promise<void> | void;
}

export interface HyperVOptions {
  /** Name of this Hyper-V host as the rest of hvprotect knows it. Default: os.hostname(). */
  hostName?: string;
  /** PowerShell executable (path or name on PATH). Default: found on PATH, see findPowerShell. */
  powershell?: string;
  /** Environment for PowerShell (PATH lookup uses it too). Default: process.env. */
  env?: NodeJS.ProcessEnv;
  /** Timeout of a query (list, inspect, describe, power). Default 120 s. */
  timeoutMs?: number;
  /** Timeout of checkpoint creation and release (guest VSS can take minutes). Default 30 min. */
  checkpointTimeoutMs?: number;
  /**
   * How long CreateSnapshot may run while an offline VM is paused or saved for it; past that the
   * job is asked to terminate and the VM is resumed. Default 5 min.
   */
  quiescedTimeoutMs?: number;
  /**
   * During a transfer, how often to ask whether the VM is still on this host (a PowerShell process
   * each time), in the background. Default 10 s: a VM that live-migrated is followed within ~10 s
   * plus one ask, and a 4 GiB disk costs ~10 PowerShell runs instead of 256 waited for.
   */
  placementCheckMs?: number;
  /** Bytes asked of one GetVirtualDiskChanges call. Default 64 GiB. */
  rctQueryBytes?: number;
  /** GetVirtualDiskChanges calls one PowerShell process makes before handing back. Default 256. */
  rctCallsPerProcess?: number;
  /** Opens a frozen disk file. Default: openVhdx from the project's vhdx library. */
  openDisk?: (path: string) => Promise<VhdxImage> | VhdxImage;
  /** Guest volumes when known better than the host-side approximation (see parse.ts). */
  guestVolumes?: (facts: Omit<VmFacts, 'volumes'>) => GuestVolume[] | undefined;
  /**
   * Folder of the RCT store (rct-store.ts). Default: %ProgramData%\hvprotect\hyperv-rct (the OS
   * temp folder elsewhere). A folder all cluster nodes share keeps tracking across live migration.
   */
  stateDir?: string;
  /** Reference points this adapter made that are kept per VM; older ones are destroyed. Default 4. */
  referencePointsKept?: number;
  /**
   * GuestBackupType of application-consistent checkpoints: 'copy' (default) leaves the guest's own
   * backup history and application logs alone; 'full' lets guest applications (SQL Server,
   * Exchange) truncate their logs, for VMs whose only backup is hvprotect.
   */
  guestBackupType?: 'copy' | 'full';
  /**
   * When the guest cannot give an application-consistent checkpoint (VSS or the Linux freeze
   * fails): 'crash-consistent' (default) takes one of the running VM without downtime and says so
   * on the checkpoint; 'fail' reports the failure.
   */
  applicationConsistentFallback?: 'crash-consistent' | 'fail';
  /** The agent's OS; Windows paths handed to PowerShell get their `\\?\` form. Default: process.platform. */
  platform?: NodeJS.Platform;
  /** Tries of a GetVirtualDiskChanges call that failed transiently (32772, 32774, 32777, a job timeout). Default 5. */
  rctAttempts?: number;
  /** Wait before the first retry, doubled each time. Default 2 s. */
  rctRetryDelayMs?: number;
}

/** What releasing a Hyper-V backup checkpoint leaves: a reference point whose RCT ids are the next base. */
export interface ReleasedCheckpoint {
  alreadyReleased: boolean;
  referencePointId?: string;
  /** Per disk: the RCT id the next incremental starts from (`changedRanges(…, sinceId)`). */
  disks: { diskId: string; changeTrackingId: string }[];
  /** 'Resume-VM' or 'Start-VM' when a pause or save was still in force. */
  resumed?: string;
  /** Set when the ids could not be recorded: the next backup of the VM reads all its disks. */
  warning?: string;
}

export interface ReferencePoint {
  referencePointId: string;
  kind: 'rct' | 'log' | 'unknown';
  disks: { diskId: string; changeTrackingId: string }[];
}

/**
 * A checkpoint's own RCT id is known only once it has become a reference point (release). Until
 * then BackupCheckpoint.disks[].changeTrackingId holds this placeholder; changedRanges answers
 * `tracked: false` for it. The real ids come from releaseCheckpoint() or inspectVm().
 */
export const PENDING_RCT_PREFIX = 'hyperv-pending:';

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MiB = 1024 * 1024;

/**
 * The PowerShell to use: on Windows powershell.exe first (the Hyper-V and FailoverClusters modules
 * are Windows PowerShell modules; PowerShell 7 loads FailoverClusters through a compatibility
 * session), then pwsh; elsewhere pwsh (tests put a fake one on PATH).
 */
export function findPowerShell(env: NodeJS.ProcessEnv = process.env, platform = process.platform): string | undefined {
  const dirs = (env.PATH ?? env.Path ?? '').split(path.delimiter).filter(Boolean);
  const names = platform === 'win32' ? ['powershell.exe', 'pwsh.exe'] : ['pwsh', 'powershell.exe', 'powershell'];
  for (const name of names) {
    for (const dir of dirs) {
      const candidate = path.join(dir, name);
      try {
        fs.accessSync(candidate, platform === 'win32' ? fs.constants.F_OK : fs.constants.X_OK);
        return candidate;
      } catch {
        /* not here */
      }
    }
  }
  return undefined;
}

/**
 * Why a checkpoint of a Hyper-V Replica secondary is what it is, from the script's `replica` answer
 * (Get-VMReplication and the newest replica recovery point); undefined for any other VM.
 */
export function replicaSource(v: unknown): string | undefined {
  if (!v || typeof v !== 'object') return undefined;
  const r = v as Record<string, unknown>;
  const latest = (r.LatestRecoveryPoint && typeof r.LatestRecoveryPoint === 'object' ? r.LatestRecoveryPoint : undefined) as Record<string, unknown> | undefined;
  const last = str(r.LastReplicationTime);
  return [
    `a Hyper-V Replica secondary${str(r.PrimaryServer) ? ` of ${str(r.PrimaryServer)}` : ''}, read on the replica server without pausing or starting it:`,
    last ? `the replicated data as of ${isoDate(last)}` : 'the replicated data as last applied (time unknown)',
    `(replication ${str(r.State) ?? 'state unknown'}${str(r.Health) ? `, health ${str(r.Health)}` : ''})`,
    latest ? `; newest recovery point ${str(latest.Name) ?? str(latest.Id)} (${str(latest.SnapshotType) ?? '?'}, ${isoDate(latest.CreationTime)})` : '',
  ].join(' ').replace(' ;', ';');
}

// Read-only: a pending log of the frozen file is replayed in memory, never written back.
const defaultOpenDisk = (file: string): Promise<VhdxImage> => openVhdx(file, { writable: false });

export class HyperVHypervisor implements HypervisorAdapter {
  readonly hostName: string;
  readonly placementCheckMs: number;
  private readonly opts: HyperVOptions;
  private readonly store: RctStore;
  private readonly records: CheckpointRecords;
  private executable?: string;

  constructor(opts: HyperVOptions = {}) {
    this.opts = opts;
    this.hostName = opts.hostName ?? os.hostname();
    this.placementCheckMs = opts.placementCheckMs ?? 10_000;
    const dir = opts.stateDir ?? path.join(process.env.ProgramData ?? os.tmpdir(), 'hvprotect', 'hyperv-rct');
    this.store = new RctStore(dir, Math.max(1, opts.referencePointsKept ?? 4));
    this.records = new CheckpointRecords(dir);
  }

  /** Our record of an unfinished checkpoint on the VM; unreadable counts as none (and is reported by the caller). */
  private async record(vmId: string): Promise<CheckpointRecord | undefined> {
    return GUID.test(vmId) ? this.records.get(vmId) : undefined;
  }

  private powershell(): string {
    if (this.executable) return this.executable;
    const exe = this.opts.powershell ?? findPowerShell(this.opts.env ?? process.env);
    if (!exe) {
      throw new HypervisorError(
        'HypervisorCommandFailed',
        'no PowerShell found: neither pwsh nor powershell.exe is on PATH (set the powershell option)',
        { path: (this.opts.env ?? process.env).PATH },
      );
    }
    this.executable = exe;
    return exe;
  }

  private async run(op: ScriptOp, params: Record<string, unknown>, long = false): Promise<Record<string, unknown>> {
    const timeoutMs = long ? this.opts.checkpointTimeoutMs ?? 30 * 60_000 : this.opts.timeoutMs ?? 120_000;
    // WMI jobs give up a little before the process is killed so that the script can say why.
    const jobTimeoutSec = Math.max(5, Math.floor(timeoutMs / 1000) - 10);
    const script = buildScript(op, { ...params, jobTimeoutSec });
    const result = await runPowerShell(op, script, { executable: this.powershell(), timeoutMs, env: this.opts.env });
    return (result && typeof result === 'object' ? result : {}) as Record<string, unknown>;
  }

  private static checkpointGuid(checkpointId: string): string {
    if (!GUID.test(checkpointId)) {
      throw new HypervisorError('CheckpointNotFound', `'${checkpointId}' is not a Hyper-V checkpoint id (a GUID)`, { checkpointId });
    }
    return checkpointId.toLowerCase();
  }

  async listVms(): Promise<VmSummary[]> {
    return parseVmSummaries(await this.run('list', {}), this.hostName);
  }

  async inspectVm(vm: string): Promise<VmFacts> {
    const result = await this.run('inspect', { vm });
    const vmId = String((result.vm as Record<string, unknown> | undefined)?.Id ?? '').toLowerCase();
    // A damaged store costs change tracking (reported as unknown), never the inspection.
    const entries = GUID.test(vmId) ? await this.store.entries(vmId).catch(() => []) : [];
    return parseInspect(result, { hostName: this.hostName, guestVolumes: this.opts.guestVolumes, lastReferencePoint: entries[entries.length - 1] });
  }

  async isVmOnHost(vm: string): Promise<boolean> {
    const result = await this.run('locate', { vm });
    return result.onHost === true;
  }

  async createBackupCheckpoint(
    vmId: string,
    opts: { mode: BackupMode; offlineMethod?: OfflineMethod | 'none'; label?: string },
  ): Promise<BackupCheckpoint> {
    // A replica (found by the script itself) is never quiesced and always crash-consistent: no fallback to try.
    try {
      return await this.createCheckpointOnce(vmId, opts, opts.mode === 'online' ? 1 : 2);
    } catch (e) {
      if (!(opts.mode === 'online' && this.opts.applicationConsistentFallback !== 'fail' && isGuestConsistencyFailure(e))) throw e;
      // The guest could not quiesce itself: a crash-consistent checkpoint of the running VM, said so.
      const crash = await this.createCheckpointOnce(vmId, opts, 2);
      return { ...crash, consistency: { achieved: 'crash-consistent', reason: `the guest could not give an application-consistent checkpoint: ${(e as Error).message}` } };
    }
  }

  private async createCheckpointOnce(
    vmId: string,
    opts: { mode: BackupMode; offlineMethod?: OfflineMethod | 'none'; label?: string },
    consistencyLevel: 1 | 2,
  ): Promise<BackupCheckpoint> {
    const label = opts.label ?? '';
    const offlineMethod = opts.offlineMethod ?? 'none';
    // Without a VM id (a GUID) there is nowhere to record a pause, so none is made.
    if (opts.mode === 'offline' && offlineMethod !== 'none' && !GUID.test(vmId)) {
      throw new HypervisorError('HypervisorCommandFailed', `an offline checkpoint that pauses or saves the VM needs its id, not '${vmId}'`, { vm: vmId });
    }
    const held = await this.record(vmId);
    if (GUID.test(vmId)) await this.records.ensureDir();
    const params = {
      vm: vmId,
      mode: opts.mode,
      // undefined or 'none': do not touch the VM (it is off, saved, paused or a replica).
      offlineMethod,
      label,
      // Msvm_VirtualSystemSnapshotSettingData.ConsistencyLevel: 1 application-consistent (guest VSS),
      // 2 crash-consistent (offline: the VM is saved or paused, so its disks are quiet anyway).
      consistencyLevel,
      guestBackupType: this.opts.guestBackupType === 'full' ? 1 : 2,
      recordPath: GUID.test(vmId) ? scriptFilePath(this.records.file(vmId), this.opts.platform) : '',
      heldQuiet: held?.quiesced ?? '',
      recordCheckpointId: held && label && held.label === label ? held.checkpointId ?? '' : '',
      quiescedJobTimeoutSec: Math.max(5, Math.floor((this.opts.quiescedTimeoutMs ?? 5 * 60_000) / 1000)),
    };
    let result: Record<string, unknown>;
    try {
      result = await this.run('create-checkpoint', params, true);
    } catch (e) {
      if (e instanceof HypervisorError && GUID.test(vmId)) await this.resumeAfterFailure(vmId, e);
      throw e;
    }
    const checkpointId = String(result.snapshotInstanceId ?? '').replace(/^Microsoft:/i, '').toLowerCase();
    if (!GUID.test(checkpointId)) {
      throw new HypervisorError('HypervisorCommandFailed', `CreateSnapshot returned no usable snapshot id ('${checkpointId}')`, { result });
    }
    const trace = asArray<{ step: string; at: string }>(result.trace);
    const at = (step: string) => {
      const t = trace.find((s) => s.step === step);
      return t ? Date.parse(isoDate(t.at)) : undefined;
    };
    let downtimeMs: number | undefined;
    if (str(result.quiesced)) {
      const from = at('Save-VM') ?? at('Suspend-VM');
      const to = at('resumed');
      if (from !== undefined && to !== undefined) downtimeMs = Math.max(0, to - from);
    }
    const frozen = parseCheckpointDisks(result.disks).filter((d) => !d.passthrough && d.path);
    const disks = frozen
      .map((d) => ({
        diskId: d.diskId,
        frozenPath: d.path,
        virtualSize: d.virtualSize,
        // The id read from the frozen file itself; the placeholder only where the file could not say.
        changeTrackingId: d.rctId ?? `${PENDING_RCT_PREFIX}${checkpointId}`,
      }));
    // The VM runs again: the record now only keeps the ids read from the disks, for release to check.
    if (GUID.test(vmId)) {
      const rctIds = Object.fromEntries(disks.filter((d) => !d.changeTrackingId.startsWith(PENDING_RCT_PREFIX)).map((d) => [d.diskId, d.changeTrackingId]));
      // What the reference point will be of, per disk: the next backup finds a resized or replaced disk by it.
      const identity = Object.fromEntries(frozen.map((d) => [d.diskId, { virtualSize: d.virtualSize, path: d.path, ...(d.virtualDiskId ? { virtualDiskId: d.virtualDiskId } : {}) }]));
      if (label) await this.records.put(vmId, { version: 1, label, quiesced: null, checkpointId, at: new Date().toISOString(), rctIds, disks: identity });
      else await this.records.remove(vmId);
    }
    const replica = replicaSource(result.replica);
    return {
      checkpointId,
      vmId: str(result.vmId)?.toLowerCase() ?? vmId,
      host: this.hostName,
      mode: opts.mode,
      createdAt: isoDate(result.creationTime),
      disks,
      ...(downtimeMs !== undefined ? { downtimeMs } : {}),
      // A replica: what the checkpoint holds is what replication had applied, and it says so.
      ...(replica ? { consistency: { achieved: 'crash-consistent' as const, reason: replica } } : {}),
      // A reused checkpoint (a retry) does not say how consistent it was: left unknown, not guessed.
      ...(replica ? {} : num(result.consistencyLevel) === 1 ? { consistency: { achieved: 'application-consistent' as const } } : {}),
      ...(replica ? {} : num(result.consistencyLevel) === 2 ? { consistency: { achieved: 'crash-consistent' as const } } : {}),
    };
  }

  /**
   * A checkpoint attempt that failed or was killed after quiescing must not leave the VM down; only
   * a pause or save our record holds is undone. The record stays while it names a checkpoint (a
   * retry by label finds it by id), marked as no longer holding the VM.
   */
  private async resumeAfterFailure(vmId: string, e: HypervisorError): Promise<void> {
    let held: CheckpointRecord | undefined;
    try {
      held = await this.records.get(vmId);
    } catch (readError) {
      e.details.recordError = (readError as Error).message;
      return;
    }
    if (!held?.quiesced) return;
    try {
      await this.run('power', { vm: vmId, action: 'resume-held', held: held.quiesced }, true);
      e.details.resumedAfterFailure = true;
      if (held.checkpointId) await this.records.put(vmId, { ...held, quiesced: null });
      else await this.records.remove(vmId);
    } catch (resumeError) {
      e.details.resumedAfterFailure = false;
      e.details.resumeError = (resumeError as Error).message;
    }
  }

  /**
   * ConvertToReferencePoint: the recovery checkpoint becomes a reference point (its AVHDX merges
   * back) whose RCT ids are returned as the base of the next incremental. A checkpoint that is gone
   * already is success (alreadyReleased, no ids: the caller takes them from inspectVm or reads all).
   */
  async releaseCheckpoint(vmId: string, checkpointId: string): Promise<void> {
    await this.releaseToReferencePoint(vmId, checkpointId);
  }

  /** releaseCheckpoint with what it left: the reference point and its RCT ids per disk. */
  async releaseToReferencePoint(vmId: string, checkpointId: string): Promise<ReleasedCheckpoint> {
    const ckpt = HyperVHypervisor.checkpointGuid(checkpointId);
    const held = await this.record(vmId);
    const result = await this.run('release-checkpoint', { vm: vmId, checkpointId: ckpt, heldQuiet: held?.quiesced ?? '' }, true);
    // The VM is not held any more; a record that names another checkpoint stays for that one.
    if (held && (held.checkpointId === null || held.checkpointId === ckpt)) await this.records.remove(vmId);
    else if (held?.quiesced) await this.records.put(vmId, { ...held, quiesced: null });
    if (result.alreadyReleased === true) {
      const known = GUID.test(String(result.vmId)) ? await this.store.get(String(result.vmId), ckpt).catch(() => undefined) : undefined;
      return {
        alreadyReleased: true,
        ...(known?.referencePointId ? { referencePointId: known.referencePointId } : {}),
        disks: Object.entries(known?.disks ?? {}).map(([diskId, changeTrackingId]) => ({ diskId, changeTrackingId })),
      };
    }
    const rp = parseReferencePoint(result.referencePoint as Record<string, unknown> | undefined);
    const ids = rp ? rctIdsByDisk(rp, asArray(result.diskInstances), asArray(result.drives)) : new Map<string, string>();
    // The ids read from the frozen files at checkpoint time, checked against the reference point's.
    const read = held?.checkpointId === ckpt ? held.rctIds ?? {} : {};
    const differ = Object.entries(read).filter(([diskId, id]) => ids.has(diskId) && ids.get(diskId) !== id);
    const released: ReleasedCheckpoint = {
      alreadyReleased: false,
      ...(rp ? { referencePointId: rp.InstanceID } : {}),
      disks: [...ids].map(([diskId, changeTrackingId]) => ({ diskId, changeTrackingId })),
      ...(str(result.resumed) ? { resumed: str(result.resumed) } : {}),
      ...(differ.length
        ? {
            warning: `RCT ids read from the disk differ from the reference point's for ${differ
              .map(([diskId, id]) => `${diskId} (read ${id}, reference point ${ids.get(diskId)})`)
              .join(', ')}: the next backup of those disks may find its base unknown and do a consistency check`,
          }
        : {}),
    };
    const vmGuid = String(result.vmId ?? '').toLowerCase();
    if (rp && GUID.test(vmGuid)) {
      let dropped: RctStoreEntry[] = [];
      try {
        dropped = await this.store.put(vmGuid, {
          checkpointId: ckpt,
          referencePointId: rp.InstanceID,
          releasedAt: new Date().toISOString(),
          disks: Object.fromEntries(ids),
          ...(held?.checkpointId === ckpt && held.disks ? { identity: held.disks } : {}),
        });
      } catch (e) {
        // The checkpoint is gone either way; failing here would only make a retry lose the ids too.
        released.warning = `RCT ids not recorded in ${this.store.dir}: ${(e as Error).message}`;
      }
      await this.pruneReferencePoints(vmGuid, dropped);
    }
    return released;
  }

  /** Our reference points that fell out of the store are destroyed; failures only delay that. */
  private async pruneReferencePoints(vmId: string, dropped: RctStoreEntry[]): Promise<void> {
    for (const entry of dropped) {
      if (!entry.referencePointId) continue;
      try {
        await this.destroyReferencePoint(vmId, entry.referencePointId);
      } catch {
        /* a reference point left over costs only metadata; the next prune does not see it again */
      }
    }
  }

  async releaseCheckpointsByLabel(vmId: string, label: string): Promise<string[]> {
    const result = await this.run('checkpoints-by-label', { vm: vmId, label });
    const ids = asArray<unknown>(result.checkpointIds).map((id) => String(id).toLowerCase());
    for (const id of ids) await this.releaseToReferencePoint(vmId, id);
    // An attempt killed between quiescing the VM and CreateSnapshot left a pause and no checkpoint.
    const held = await this.record(vmId);
    if (held && held.label === label) {
      if (held.quiesced) await this.run('power', { vm: vmId, action: 'resume-held', held: held.quiesced }, true);
      await this.records.remove(vmId);
    }
    return ids;
  }

  private async checkpointDisk(vmId: string, checkpointId: string, diskId: string): Promise<CheckpointDiskJson & { vmId: string }> {
    const ckpt = HyperVHypervisor.checkpointGuid(checkpointId);
    const result = await this.run('describe-checkpoint', { vm: vmId, checkpointId: ckpt });
    const disk = parseCheckpointDisks(result.disks).find((d) => d.diskId === diskId);
    if (!disk || disk.passthrough || !disk.path) {
      throw new HypervisorError('CheckpointNotFound', `checkpoint ${ckpt} of VM ${vmId} has no virtual disk ${diskId}`, {
        vmId,
        checkpointId: ckpt,
        diskId,
      });
    }
    return { ...disk, vmId: String(result.vmId ?? vmId).toLowerCase() };
  }

  async changedRanges(vmId: string, checkpointId: string, diskId: string, sinceId: string): Promise<ChangedRanges> {
    const disk = await this.checkpointDisk(vmId, checkpointId, diskId);
    if (!sinceId) return { tracked: false, ranges: [], reason: 'no change-tracking id to start from' };
    let limitId = sinceId;
    const entries = GUID.test(disk.vmId) ? await this.store.entries(disk.vmId).catch(() => [] as RctStoreEntry[]) : [];
    const pending = sinceId.startsWith(PENDING_RCT_PREFIX) ? sinceId.slice(PENDING_RCT_PREFIX.length).toLowerCase() : undefined;
    // The reference point the base id belongs to (newest first): what it recorded of the disk.
    const baseEntry = [...entries].reverse().find((e) => (pending ? e.checkpointId === pending : e.disks[diskId] === sinceId));
    const recorded = baseEntry?.identity ? identities(baseEntry.identity)[diskId] : undefined;
    const changed = recorded ? diskIdentityChange(recorded, { virtualSize: disk.virtualSize, path: disk.path, ...(disk.virtualDiskId ? { virtualDiskId: disk.virtualDiskId } : {}) }) : undefined;
    if (changed) {
      // RCT ids of a resized or replaced disk say nothing about what differs: a named reset, never a guess.
      return { tracked: false, ranges: [], reason: `change tracking reset on ${diskId} (${disk.path}): the disk was ${changed}; a consistency check reads it in full` };
    }
    if (pending) {
      const base = pending;
      const entry = baseEntry;
      const rct = entry?.disks[diskId];
      if (!rct) {
        return {
          tracked: false,
          ranges: [],
          reason: `checkpoint ${base} was not released into a reference point known to this host (${this.store.dir}); its RCT id is unknown`,
        };
      }
      limitId = rct;
    }
    const size = disk.virtualSize;
    if (!(size > 0)) return { tracked: false, ranges: [], reason: `size of ${disk.path} unknown` };
    // Microsoft documents ByteLength as "less than the size of the virtual disk": never ask for all of it at once.
    const maxQueryBytes = Math.max(512, Math.min(this.opts.rctQueryBytes ?? 64 * 1024 * MiB, size - Math.min(MiB, size / 2)));
    const ranges: { offset: number; length: number }[] = [];
    let offset = 0;
    let transientFailures = 0;
    while (offset < size) {
      const result = await this.run('disk-changes', {
        path: disk.path,
        limitId,
        offset,
        length: size - offset,
        maxQueryBytes,
        maxCalls: this.opts.rctCallsPerProcess ?? 256,
      });
      const failed = result.failed as Record<string, unknown> | null | undefined;
      const pages = asArray(result.pages);
      const reached = pages.reduce((at, p) => at + (num(p.ProcessedByteLength) ?? 0), offset);
      let expected = offset;
      for (const page of pages) {
        const pageOffset = num(page.ByteOffset);
        const processed = num(page.ProcessedByteLength) ?? 0;
        const offs = asArray<unknown>(page.ChangedByteOffsets).map(Number);
        const lens = asArray<unknown>(page.ChangedByteLengths).map(Number);
        if (pageOffset !== expected || offs.length !== lens.length || offs.some((n) => !Number.isFinite(n)) || lens.some((n) => !Number.isFinite(n))) {
          return { tracked: false, ranges: [], reason: `GetVirtualDiskChanges answered out of shape at offset ${expected}` };
        }
        offs.forEach((o, i) => ranges.push({ offset: o, length: lens[i] }));
        expected += processed;
      }
      if (failed) {
        const kind = classifyRctFailure(failed);
        if (kind.transient && ++transientFailures < (this.opts.rctAttempts ?? 5)) {
          // Hyper-V busy or slow: ask again from where it got to, not from the start, and never read all for it.
          await new Promise((r) => setTimeout(r, (this.opts.rctRetryDelayMs ?? 2000) * 2 ** (transientFailures - 1)));
          offset = Math.max(offset, reached);
          continue;
        }
        if (kind.reset) {
          return { tracked: false, ranges: [], reason: `change tracking reset on ${disk.path} since '${sinceId}' (${kind.what}): ${str(failed.message) ?? 'no message'}` };
        }
        throw new HypervisorError('HypervisorCommandFailed', `GetVirtualDiskChanges on ${disk.path} failed (${kind.what}): ${str(failed.message) ?? 'no message'}`, {
          op: 'disk-changes',
          path: disk.path,
          ...(kind.returnValue !== undefined ? { returnValue: kind.returnValue } : {}),
          transient: kind.transient,
          attempts: kind.transient ? transientFailures : transientFailures + 1,
        });
      }
      if (expected <= offset) {
        return { tracked: false, ranges: [], reason: `GetVirtualDiskChanges made no progress at offset ${offset}` };
      }
      offset = expected;
    }
    return { tracked: true, ranges: mergeRanges(ranges, size) };
  }

  async openCheckpointDisk(vmId: string, checkpointId: string, diskId: string): Promise<DiskReader> {
    const disk = await this.checkpointDisk(vmId, checkpointId, diskId);
    const open = this.opts.openDisk ?? defaultOpenDisk;
    let image: VhdxImage;
    try {
      image = await open(disk.path);
    } catch (e) {
      throw new HypervisorError('HypervisorCommandFailed', `cannot open ${disk.path} of checkpoint ${checkpointId}: ${(e as Error).message}`, {
        path: disk.path,
        checkpointId,
        diskId,
      });
    }
    return {
      virtualSize: image.virtualSize,
      read: async (offset, length) => image.read(offset, length),
      ...(image.readInto ? { readInto: async (target: Buffer, offset: number) => void (await image.readInto!(target, offset)) } : {}),
      allocatedRanges: async () => mergeRanges(await image.allocatedRanges(), image.virtualSize),
      close: async () => {
        await image.close();
      },
    };
  }

  async pauseVm(vmId: string): Promise<void> {
    await this.run('power', { vm: vmId, action: 'pause' });
  }

  async saveVm(vmId: string): Promise<void> {
    await this.run('power', { vm: vmId, action: 'save' }, true);
  }

  async resumeVm(vmId: string): Promise<void> {
    await this.run('power', { vm: vmId, action: 'resume' }, true);
  }

  /** Reference points of a VM (ours and any other RCT-based backup product's). */
  async listReferencePoints(vmId: string): Promise<ReferencePoint[]> {
    const result = await this.run('list-reference-points', { vm: vmId });
    const diskInstances = asArray(result.diskInstances);
    const drives = asArray(result.drives);
    return asArray(result.referencePoints)
      .map((r) => parseReferencePoint(r))
      .filter((r): r is ReferencePointJson => !!r)
      .map((rp) => ({
        referencePointId: rp.InstanceID,
        kind: rp.ReferencePointType === 2 ? ('rct' as const) : rp.ReferencePointType === 1 ? ('log' as const) : ('unknown' as const),
        disks: [...rctIdsByDisk(rp, diskInstances, drives)].map(([diskId, changeTrackingId]) => ({ diskId, changeTrackingId })),
      }));
  }

  /** DestroyReferencePoint; idempotent. Returns false when it was gone already. */
  async destroyReferencePoint(vmId: string, referencePointId: string): Promise<boolean> {
    const result = await this.run('destroy-reference-point', { vm: vmId, referencePointId }, true);
    return result.alreadyGone !== true;
  }
}
