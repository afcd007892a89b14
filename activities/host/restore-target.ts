// Where a restore may write on this host. The agent checks what a workflow asks as a second line
// behind Temporal's own access control: anyone who can start a workflow could otherwise name any
// folder (/etc, ../.., a UNC share, a running VM's own folder) as an export target.
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import type { HypervisorAdapter } from '../../hypervisor/types';

/** Staging folder of whole-VM restores (disks land here before importVm moves them into place). */
export function restoreStagingRoot(): string {
  return path.join(os.tmpdir(), 'hvprotect-restore');
}

/** The restore roots this agent was given: `--restore-root`, else HVPROTECT_RESTORE_ROOTS, else the temp folder. */
export function configuredRestoreRoots(flag: string[] | undefined, env = process.env.HVPROTECT_RESTORE_ROOTS): string[] {
  if (flag && flag.length > 0) return flag;
  const fromEnv = (env ?? '').split(path.delimiter).filter((s) => s.trim() !== '');
  return fromEnv.length > 0 ? fromEnv : [os.tmpdir()];
}

function refuse(message: string): never {
  throw ApplicationFailure.nonRetryable(message, 'RestoreTargetRefused');
}

function isUnc(p: string): boolean {
  return /^[\\/]{2}/.test(p);
}

function inside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** The real path of `p`, or of its nearest existing ancestor joined with the rest. */
async function realPathOfNearest(p: string): Promise<string> {
  let cur = p;
  const rest: string[] = [];
  for (;;) {
    try {
      return path.join(await fsp.realpath(cur), ...rest);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      const up = path.dirname(cur);
      if (up === cur) throw err;
      rest.unshift(path.basename(cur));
      cur = up;
    }
  }
}

/** Folders holding a registered VM's disks or configuration on this host (real paths). */
async function vmFolders(adapter: HypervisorAdapter): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const vm of await adapter.listVms()) {
    let facts;
    try {
      facts = await adapter.inspectVm(vm.vmId);
    } catch {
      continue; // moved away meanwhile: not on this host
    }
    const dirs = [facts.configPath, ...facts.disks.flatMap((d) => [path.dirname(d.path), path.dirname(d.basePath)])].filter(Boolean);
    for (const d of dirs) out.set(await realPathOfNearest(path.resolve(d)), facts.name);
  }
  return out;
}

export interface RestoreTargetPolicy {
  /** Checks and creates an export folder; returns its real path. */
  exportDir(dir: unknown): Promise<string>;
  /** Creates the staging folder of one whole-VM restore; returns its real path. */
  stagingDir(restoreId: string): Promise<string>;
  /** Refuses disk files for importVm that are not in a staging folder of this agent. */
  checkImportDisks(paths: unknown[]): Promise<void>;
}

export function createRestoreTargetPolicy(deps: { adapter: HypervisorAdapter; roots: string[] }): RestoreTargetPolicy {
  const { adapter } = deps;
  const rootsLine = deps.roots.join(', ');
  const realRoots = async (): Promise<string[]> =>
    Promise.all(
      deps.roots.map(async (r) => {
        try {
          return await fsp.realpath(path.resolve(r));
        } catch (err) {
          return refuse(`restore root ${r} is not usable on host ${adapter.hostName}: ${(err as Error).message}`);
        }
      }),
    );
  return {
    async exportDir(dir) {
      if (typeof dir !== 'string' || dir === '' || dir.includes('\0')) refuse(`restore target ${JSON.stringify(dir)} is not a folder name`);
      if (isUnc(dir)) refuse(`restore target ${dir} is a network (UNC) path: restores write only under this host's restore roots (${rootsLine})`);
      if (!path.isAbsolute(dir)) refuse(`restore target ${dir} is not an absolute path: restores write only under this host's restore roots (${rootsLine})`);
      if (dir.split(/[\\/]/).includes('..')) refuse(`restore target ${dir} contains "..": restores write only under this host's restore roots (${rootsLine})`);
      const roots = await realRoots();
      const underRoot = (real: string) => roots.some((r) => inside(real, r));
      const before = await realPathOfNearest(dir);
      if (!underRoot(before)) {
        refuse(`restore target ${dir} (${before}) is outside this host's restore roots (${rootsLine}); the agent's --restore-root or HVPROTECT_RESTORE_ROOTS sets them`);
      }
      const folders = await vmFolders(adapter);
      const vm = folders.get(before);
      if (vm !== undefined) refuse(`restore target ${dir} holds the disks or configuration of VM ${vm}: export to a folder of its own`);
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      const real = await fsp.realpath(dir);
      // A symlink swapped in while the folder was created would escape here.
      if (!underRoot(real)) refuse(`restore target ${dir} resolves to ${real}, outside this host's restore roots (${rootsLine})`);
      if (folders.has(real)) refuse(`restore target ${dir} holds the disks or configuration of VM ${folders.get(real)}: export to a folder of its own`);
      return real;
    },

    async stagingDir(restoreId) {
      const dir = path.join(restoreStagingRoot(), restoreId.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '_'));
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      return fsp.realpath(dir);
    },

    async checkImportDisks(paths) {
      await fsp.mkdir(restoreStagingRoot(), { recursive: true, mode: 0o700 });
      const staging = await fsp.realpath(restoreStagingRoot());
      for (const p of paths) {
        if (typeof p !== 'string' || !path.isAbsolute(p) || isUnc(p)) refuse(`restored disk ${JSON.stringify(p)} is not a file this agent restored`);
        let real: string;
        try {
          real = await fsp.realpath(p);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // a retry after the import moved it (the adapter decides)
          throw err;
        }
        if (!inside(real, staging) || real === staging) refuse(`restored disk ${p} is not in this agent's staging folder (${staging}): a VM is registered only from disks it restored`);
      }
    },
  };
}
