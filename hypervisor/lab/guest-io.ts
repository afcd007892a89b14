// The guest's I/O on a lab VM's disks: single writes and reads, and the guest write load (a child
// process, guest-write-load.ts) whose batches land here under the lab lock.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { openFileSystem, readPartitionTable, type RandomAccess } from '../../guestfs';
import type { VmState } from '../types';
import { appendWrites } from './change-tracking';
import { guestWrite } from './disk-content';
import type { DiskRecord, VmRecord } from './state';
import { LabError, failed, type LabStore } from './store';
import * as vhdx from './vhdx-io';

export interface WriteLoadResult {
  vmId: string;
  diskId: string;
  seed: number;
  /** Total writes of this seed on the disk (including those of earlier runs it continued). */
  writes: number;
  stopReason: 'signal' | 'max-writes' | 'vm-deleted' | 'replaced';
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

/**
 * Guest writes on a running VM's disk: ranges go to the change-tracking log (fsync'd) first, then
 * the data to the disk file the VM writes to now (the AVHDX while a checkpoint exists).
 */
export async function writeDisk(lab: LabStore, vm: string, diskId: string, offset: number, data: Buffer): Promise<void> {
  await lab.mutate('writeDisk', async (s) => {
    const rec = lab.findVm(s, vm);
    if (rec.state !== 'running') throw failed(`VM ${rec.name} is ${rec.state}: the guest cannot write`, { vmId: rec.vmId });
    const d = lab.disk(rec, diskId);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.length > d.virtualSize) {
      throw failed(`write ${offset}+${data.length} lies outside disk ${diskId} (${d.virtualSize} bytes)`);
    }
    await applyWrites(lab, rec, d, [{ offset, data }]);
  });
}

async function applyWrites(lab: LabStore, rec: VmRecord, d: DiskRecord, writes: { offset: number; data: Buffer }[]): Promise<void> {
  await appendWrites(lab.paths.trackingLog(rec, d), writes.map((w) => ({ offset: w.offset, length: w.data.length })));
  await vhdx.writeDisk(lab.paths.topPath(rec, d), writes);
}

/** What the guest sees now on a disk (through any checkpoint's AVHDX). */
export async function readDisk(lab: LabStore, vm: string, diskId: string, offset: number, length: number): Promise<Buffer> {
  return lab.locked('readDisk', async (s) => {
    const rec = lab.findVm(s, vm);
    return vhdx.readDisk(lab.paths.topPath(rec, lab.disk(rec, diskId)), offset, length);
  });
}

const MiB = 1024 * 1024;
/** The least space a write load needs (its longest write). */
const MIN_REGION = 64 * 1024;

/**
 * Where the guest write load may write on a disk: space no file system uses. A disk without a
 * partition table and without a file system is all the load's; on a partitioned disk it is the
 * largest stretch outside every partition, the first and the last MiB (the partition tables,
 * GPT's backup copy at the end); a disk with no such stretch, or a bare file system, is refused.
 */
export async function writeLoadRegion(disk: RandomAccess, what: string): Promise<{ offset: number; length: number }> {
  const table = await readPartitionTable(disk, what).catch(() => undefined); // not a table a guest would have: data
  if (!table || table.scheme === 'none') {
    const fs = await openFileSystem(disk, what).catch(() => undefined);
    if (fs) throw new LabError(`${what} holds a ${fs.type} file system without a partition table: the guest write load would write into it`);
    return { offset: 0, length: disk.size };
  }
  const taken = [{ start: 0, end: MiB }, ...table.partitions.map((p) => ({ start: p.start, end: p.start + p.size })), { start: Math.max(0, disk.size - MiB), end: disk.size }].sort((a, b) => a.start - b.start);
  let best = { offset: 0, length: 0 };
  let at = 0;
  for (const t of taken) {
    const start = Math.ceil(at / 4096) * 4096;
    const end = Math.floor(t.start / 4096) * 4096;
    if (end - start > best.length) best = { offset: start, length: end - start };
    at = Math.max(at, t.end);
  }
  if (best.length < MIN_REGION) {
    throw new LabError(`${what}: its partitions leave no unused space of ${MIN_REGION / 1024} KiB or more; the guest write load writes only where no file system is (leave unpartitioned space at the end of the disk)`);
  }
  return best;
}

/** Register a guest write load on a VM; it continues where a load with the same seed and disk stopped. */
export async function registerWriteLoad(lab: LabStore, vm: string, opts: { seed: number; diskId?: string; pid?: number }): Promise<{ vmId: string; diskId: string; writes: number; region: { offset: number; length: number } }> {
  if (!Number.isSafeInteger(opts.seed)) throw new LabError(`seed must be an integer, got ${opts.seed}`);
  return lab.mutate('registerWriteLoad', async (s) => {
    const rec = lab.findVm(s, vm);
    const diskId = opts.diskId ?? rec.disks[0]?.diskId;
    if (diskId === undefined) throw failed(`VM ${rec.name} has no disk to write to`);
    const d = lab.disk(rec, diskId);
    const cur = rec.writeLoad;
    if (cur?.pid !== undefined && cur.pid !== opts.pid && cur.pid !== process.pid && pidAlive(cur.pid)) {
      throw failed(`VM ${rec.name} already has a guest write load (pid ${cur.pid})`, { vmId: rec.vmId, pid: cur.pid });
    }
    const top = lab.paths.topPath(rec, d);
    const region = await writeLoadRegion({ size: d.virtualSize, read: (o, l) => vhdx.readDisk(top, o, l) }, `VM ${rec.name} disk ${diskId}`);
    const same = cur && cur.seed === opts.seed && cur.diskId === diskId && (cur.region?.offset ?? 0) === region.offset && (cur.region?.length ?? d.virtualSize) === region.length;
    const writes = same ? cur.writes : 0;
    rec.writeLoad = { seed: opts.seed, diskId, writes, region, ...(opts.pid !== undefined ? { pid: opts.pid } : {}), startedAt: new Date().toISOString() };
    return { vmId: rec.vmId, diskId, writes, region };
  });
}

/**
 * One batch of the registered write load: the next `count` writes of its seed, if the VM runs.
 * `state` 'gone' means the VM was deleted, 'replaced' that another load took over.
 */
export async function guestWriteBatch(lab: LabStore, vmId: string, opts: { count: number; maxWrites?: number; pid?: number }): Promise<{ written: number; writes: number; state: VmState | 'gone' | 'replaced' }> {
  return lab.mutate('guestWrites', async (s) => {
    const rec = s.vms[vmId];
    if (!rec) return { written: 0, writes: 0, state: 'gone' as const };
    const wl = rec.writeLoad;
    if (!wl || (opts.pid !== undefined && wl.pid !== undefined && wl.pid !== opts.pid)) return { written: 0, writes: wl?.writes ?? 0, state: 'replaced' as const };
    if (rec.state !== 'running') return { written: 0, writes: wl.writes, state: rec.state };
    const d = lab.disk(rec, wl.diskId);
    const n = Math.max(0, Math.min(opts.count, (opts.maxWrites ?? Infinity) - wl.writes));
    if (n === 0) return { written: 0, writes: wl.writes, state: rec.state };
    const writes = [];
    const region = wl.region ?? { offset: 0, length: d.virtualSize };
    for (let i = 0; i < n; i++) {
      const w = guestWrite(wl.seed, wl.writes + i, region.length);
      writes.push({ ...w, offset: region.offset + w.offset });
    }
    await applyWrites(lab, rec, d, writes);
    wl.writes += n;
    return { written: n, writes: wl.writes, state: rec.state };
  });
}

/** Run a guest write load as a child process (see guest-write-load.ts); resolves once it writes. It stops with this process. */
export async function startWriteLoad(lab: LabStore, opts: StartWriteLoadOptions): Promise<WriteLoadProcess> {
  const args = ['--lab', lab.root, '--vm', opts.vm, '--seed', String(opts.seed), '--stop-with-parent'];
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

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
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
