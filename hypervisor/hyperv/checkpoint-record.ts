// What an unfinished backup checkpoint of ours holds on a VM, kept on the host's disk so that a
// retry or a release after a crash knows it, and touches nothing it does not hold.
//
// Why it exists: an offline checkpoint pauses or saves the VM, and the process doing it can die
// (agent killed, host rebooted mid-backup) before it resumes the VM or renames the new recovery
// checkpoint to its label. Without a record, a retry or a release cannot tell a VM hvprotect paused
// from one an administrator left paused or saved on purpose.
//
// Written by the create-checkpoint script itself (it alone knows the moment it quiesces and the id
// CreateSnapshot returned), read and removed here. Format: `<dir>/<vmId>.checkpoint.json` =
// { version: 1, label, quiesced: 'pause' | 'save' | null, checkpointId: GUID | null, at }, written
// to `<file>.tmp` with a flush to disk and moved into place.
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { DiskIdentity } from './parse';

export interface CheckpointRecord {
  version: 1;
  label: string;
  /** How hvprotect quieted the VM; null once resumed (or never quieted). */
  quiesced: 'pause' | 'save' | null;
  /** The recovery checkpoint CreateSnapshot made, once it exists. */
  checkpointId: string | null;
  at: string;
  /** diskId → the RCT id read from the frozen file (kept until release, which checks it). */
  rctIds?: Record<string, string>;
  /** diskId → size, file and virtual disk id of the frozen disk (the reference point keeps them). */
  disks?: Record<string, DiskIdentity>;
}

const SAFE_VM_ID = /^[0-9a-f-]{36}$/i;

/**
 * The path the PowerShell script is given for a file of ours. On Windows it is the `\\?\` form
 * (path.win32.toNamespacedPath: `\\?\C:\…`, `\\?\UNC\server\share\…`), so a state folder deep in a
 * CSV or on a share opens past MAX_PATH (260) in Windows PowerShell 5.1 (.NET Framework 4.6.2+) too.
 */
export function scriptFilePath(file: string, platform: NodeJS.Platform = process.platform): string {
  if (platform !== 'win32') return file;
  if (!path.win32.isAbsolute(file)) throw new Error(`not an absolute Windows path: ${JSON.stringify(file)}`);
  return path.win32.toNamespacedPath(path.win32.normalize(file));
}

export class CheckpointRecords {
  constructor(readonly dir: string) {}

  /** Where the script writes the record of `vmId` (a GUID; anything else must not become a path). */
  file(vmId: string): string {
    if (!SAFE_VM_ID.test(vmId)) throw new Error(`not a VM id: ${JSON.stringify(vmId)}`);
    return path.join(this.dir, `${vmId.toLowerCase()}.checkpoint.json`);
  }

  /** The record, or undefined when there is none; a damaged record is an error (never guessed). */
  async get(vmId: string): Promise<CheckpointRecord | undefined> {
    if (!SAFE_VM_ID.test(vmId)) return undefined;
    let text: string;
    try {
      text = await fs.readFile(this.file(vmId), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    // PowerShell may write a byte-order mark.
    const r = JSON.parse(text.replace(/^\uFEFF/, '')) as CheckpointRecord;
    const quiesced = r.quiesced ?? null;
    if (r.version !== 1 || typeof r.label !== 'string' || (quiesced !== null && quiesced !== 'pause' && quiesced !== 'save')) {
      throw new Error(`${this.file(vmId)}: not an hvprotect checkpoint record`);
    }
    const rctIds = r.rctIds && typeof r.rctIds === 'object' ? Object.fromEntries(Object.entries(r.rctIds).map(([k, v]) => [k, String(v)])) : undefined;
    const disks = r.disks && typeof r.disks === 'object' ? identities(r.disks) : undefined;
    return {
      version: 1,
      label: r.label,
      quiesced,
      checkpointId: r.checkpointId ? String(r.checkpointId).toLowerCase() : null,
      at: String(r.at ?? ''),
      ...(rctIds ? { rctIds } : {}),
      ...(disks ? { disks } : {}),
    };
  }

  /** Replace the record (temp file, fsync, rename), as the script writes it. */
  async put(vmId: string, record: CheckpointRecord): Promise<void> {
    await this.ensureDir();
    const target = this.file(vmId);
    const tmp = `${target}.${process.pid}.tmp`;
    const fh = await fs.open(tmp, 'w');
    try {
      await fh.writeFile(JSON.stringify(record));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, target);
  }

  async remove(vmId: string): Promise<void> {
    if (SAFE_VM_ID.test(vmId)) await fs.rm(this.file(vmId), { force: true });
  }

  async ensureDir(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true });
  }
}

/** Disk identities as stored (a record or the RCT store); anything malformed is left out, not guessed. */
export function identities(v: unknown): Record<string, DiskIdentity> {
  const out: Record<string, DiskIdentity> = {};
  for (const [diskId, d] of Object.entries((v ?? {}) as Record<string, Partial<DiskIdentity>>)) {
    if (!d || typeof d !== 'object' || typeof d.virtualSize !== 'number' || typeof d.path !== 'string') continue;
    out[diskId] = { virtualSize: d.virtualSize, path: d.path, ...(typeof d.virtualDiskId === 'string' && d.virtualDiskId ? { virtualDiskId: d.virtualDiskId } : {}) };
  }
  return out;
}
