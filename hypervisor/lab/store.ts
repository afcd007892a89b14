// The lab's store: lab.json under the lab lock, and looking VMs and disks up in it. Every section of
// the lab (fabric.ts, vm-config.ts, power.ts, guest-io.ts, checkpoints.ts, migration.ts) works
// through it: lab lock → read lab.json → change → write lab.json atomically.
import { promises as fsp } from 'node:fs';
import { HypervisorError } from '../types';
import { withLock } from './lock';
import { LabPaths, emptyState, readState, writeState, type DiskRecord, type LabState, type VmRecord } from './state';

/** A lab request that cannot be carried out as asked (bad spec, unknown host, name taken…). */
export class LabError extends Error {
  override readonly name = 'LabError';
}

export function notFound(vm: unknown, root: string): HypervisorError {
  const shown = typeof vm === 'string' ? JSON.stringify(vm.slice(0, 200)) : `(${typeof vm})`;
  return new HypervisorError('VmNotFound', `no VM ${shown} in lab ${root}`, { vm: typeof vm === 'string' ? vm.slice(0, 200) : undefined });
}

export function failed(message: string, details: Record<string, unknown> = {}): HypervisorError {
  return new HypervisorError('HypervisorCommandFailed', message, details);
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fsp.access(p);
    return true;
  } catch {
    return false;
  }
}

export async function moveFile(from: string, to: string): Promise<void> {
  try {
    await fsp.rename(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    await fsp.copyFile(from, to);
    await fsp.rm(from);
  }
}

export class LabStore {
  readonly paths: LabPaths;

  constructor(root: string) {
    this.paths = new LabPaths(root);
  }

  get root(): string {
    return this.paths.root;
  }

  /** The store of the lab at `root` (the guest write load's process uses it without the rest of the lab). */
  static async open(root: string): Promise<LabStore> {
    const store = new LabStore(root);
    await store.init();
    return store;
  }

  /** Create an empty lab.json if there is none; refuse a folder whose lab.json is not ours. */
  protected async init(): Promise<void> {
    await fsp.mkdir(this.root, { recursive: true });
    if (!(await exists(this.paths.stateFile))) {
      await withLock(this.paths.lockFile, async () => {
        if (!(await exists(this.paths.stateFile))) await writeState(this.paths, emptyState());
      });
    }
    await readState(this.paths);
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
  async persist(s: LabState): Promise<void> {
    await writeState(this.paths, s);
  }

  /** Under the lock without changing lab.json (reading a checkpoint must not race a migration). */
  async locked<T>(purpose: string, fn: (s: LabState) => Promise<T>): Promise<T> {
    return withLock(this.paths.lockFile, async () => fn(await this.state()), { purpose });
  }

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

  /** A disk of the VM (HypervisorCommandFailed naming it if there is none). */
  disk(rec: VmRecord, diskId: unknown): DiskRecord {
    const d = typeof diskId === 'string' ? rec.disks.find((x) => x.diskId === diskId) : undefined;
    if (!d) {
      throw failed(`VM ${rec.name} (${rec.vmId}) has no disk ${JSON.stringify(typeof diskId === 'string' ? diskId.slice(0, 100) : diskId)}`, {
        vmId: rec.vmId,
        diskId,
      });
    }
    return d;
  }
}
