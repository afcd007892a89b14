// Which reference point (and so which RCT ids) each released backup checkpoint became.
//
// Why it exists: Hyper-V gives a checkpoint's RCT ids only when the checkpoint is converted to a
// reference point, at release, after the recovery point has been committed with the checkpoint's
// change-tracking id. That id is therefore a placeholder (`hyperv-pending:<checkpoint>`), and this
// store turns it into the RCT ids when the next backup asks for changes since it.
//
// Format: one JSON file per VM, `<dir>/<vmId>.json` = { version: 1, entries: Entry[] } newest last,
// at most `keep` entries. Written to a temp name, fsynced and renamed into place.
// Where: per host by default; point `stateDir` at a folder every cluster node sees (a CSV folder)
// so that express full backups continue after a live migration instead of one consistency check.

import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { DiskIdentity } from './parse';

export interface RctStoreEntry {
  checkpointId: string;
  referencePointId?: string;
  releasedAt: string;
  /** diskId → RCT id of the reference point. */
  disks: Record<string, string>;
  /** diskId → size, file and virtual disk id the reference point was taken of (absent in older entries). */
  identity?: Record<string, DiskIdentity>;
}

interface FileShape {
  version: 1;
  entries: RctStoreEntry[];
}

const SAFE_VM_ID = /^[0-9a-f-]{36}$/i;

export class RctStore {
  constructor(
    readonly dir: string,
    readonly keep = 16,
  ) {}

  private file(vmId: string): string {
    // VM ids come from Get-VM (GUIDs); anything else must not become a path.
    if (!SAFE_VM_ID.test(vmId)) throw new Error(`not a VM id: ${JSON.stringify(vmId)}`);
    return path.join(this.dir, `${vmId.toLowerCase()}.json`);
  }

  async entries(vmId: string): Promise<RctStoreEntry[]> {
    let text: string;
    try {
      text = await fs.readFile(this.file(vmId), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const parsed = JSON.parse(text) as FileShape;
    if (parsed.version !== 1 || !Array.isArray(parsed.entries)) throw new Error(`${this.file(vmId)}: not an hvprotect RCT store file`);
    return parsed.entries;
  }

  async get(vmId: string, checkpointId: string): Promise<RctStoreEntry | undefined> {
    return (await this.entries(vmId)).find((e) => e.checkpointId === checkpointId.toLowerCase());
  }

  /** Adds (or replaces) an entry; returns the entries that fell out past `keep`. */
  async put(vmId: string, entry: RctStoreEntry): Promise<RctStoreEntry[]> {
    const all = (await this.entries(vmId)).filter((e) => e.checkpointId !== entry.checkpointId);
    all.push({ ...entry, checkpointId: entry.checkpointId.toLowerCase() });
    const dropped = all.length > this.keep ? all.splice(0, all.length - this.keep) : [];
    await fs.mkdir(this.dir, { recursive: true });
    const target = this.file(vmId);
    const tmp = `${target}.${process.pid}.${Date.now()}.tmp`;
    const fh = await fs.open(tmp, 'w');
    try {
      await fh.writeFile(JSON.stringify({ version: 1, entries: all } satisfies FileShape, null, 1));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, target);
    return dropped;
  }
}
