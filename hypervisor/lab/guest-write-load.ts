// The guest write load: a lab VM's guest writing to one of its disks while backups run, only
// where no file system is (a disk without a partition table, else unpartitioned space: see
// writeLoadRegion in guest-io.ts), so the guest file systems in backups stay consistent.
// Write #k (0-based) is a pure function of (seed, k, disk size) — see disk-content.ts — so a test
// recomputes what the disk held at any checkpoint with expectedDiskContent(initial, seed,
// checkpoint.guestWriteSeq). Each batch of writes is one step under the lab lock: the writer
// rereads the VM's state (running? which file is the top of the disk's chain now?), logs the ranges
// for change tracking, writes, and records its count in lab.json; a checkpoint, a merge or a
// migration therefore always falls between two batches. A paused, saved or off VM does not write.
//
// As a process:
//   node dist/hypervisor/lab/guest-write-load.js --lab ROOT --vm ID|NAME --seed N
//        [--disk ID] [--interval-ms 20] [--batch 4] [--max-writes N]
// prints JSON lines {"event":"started",…} and, after SIGTERM/SIGINT or --max-writes, {"event":"stopped",…}.
import { Command, InvalidArgumentError } from 'commander';
import { guestWriteBatch, registerWriteLoad, type WriteLoadResult } from './guest-io';
import { LabStore } from './store';

export type { WriteLoadResult } from './guest-io';
export { expectedDiskContent, guestWrite, guestWriteRanges, initialDiskContent } from './disk-content';

export interface GuestWriteLoadOptions {
  labRoot: string;
  /** VM id or name. */
  vm: string;
  seed: number;
  /** Default: the VM's first disk. */
  diskId?: string;
  /** Pause between batches (default 20 ms). */
  intervalMs?: number;
  /** Writes per batch (default 4). */
  batch?: number;
  /** Stop once the load's write count reaches this. */
  maxWrites?: number;
  signal?: AbortSignal;
  onStarted?: (info: { vmId: string; diskId: string; writes: number }) => void;
}


const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

/** Run the write load in this process until `signal` aborts, `maxWrites` is reached or the VM goes. */
export async function runGuestWriteLoad(opts: GuestWriteLoadOptions): Promise<WriteLoadResult> {
  const lab = await LabStore.open(opts.labRoot);
  const pid = process.pid;
  const reg = await registerWriteLoad(lab, opts.vm, { seed: opts.seed, diskId: opts.diskId, pid });
  opts.onStarted?.(reg);
  const interval = opts.intervalMs ?? 20;
  const batch = Math.max(1, opts.batch ?? 4);
  let writes = reg.writes;
  const result = (stopReason: WriteLoadResult['stopReason']): WriteLoadResult => ({ vmId: reg.vmId, diskId: reg.diskId, seed: opts.seed, writes, stopReason });
  for (;;) {
    if (opts.signal?.aborted) return result('signal');
    if (opts.maxWrites !== undefined && writes >= opts.maxWrites) return result('max-writes');
    const r = await guestWriteBatch(lab, reg.vmId, { count: batch, maxWrites: opts.maxWrites, pid });
    if (r.state === 'gone') return result('vm-deleted');
    if (r.state === 'replaced') return result('replaced');
    writes = r.writes;
    await sleep(r.written > 0 ? interval : Math.max(interval, 25), opts.signal);
  }
}

function int(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer ≥ ${min}`);
    return n;
  };
}

/** Process entry: returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = new Command('guest-write-load')
    .description('Keep writing to a lab VM disk, deterministically from a seed, until SIGTERM')
    .requiredOption('--lab <root>', 'lab root folder')
    .requiredOption('--vm <vm>', 'VM id or name')
    .requiredOption('--seed <n>', 'seed of the write sequence', int('--seed', -(2 ** 53 - 1)))
    .option('--disk <id>', 'disk id (default: the first disk)')
    .option('--interval-ms <n>', 'pause between batches', int('--interval-ms', 0), 20)
    .option('--batch <n>', 'writes per batch', int('--batch', 1), 4)
    .option('--max-writes <n>', 'stop after this many writes', int('--max-writes', 0))
    .option('--stop-with-parent', 'stop when stdin closes (the parent that started it is gone)')
    .exitOverride();
  try {
    program.parse(argv, { from: 'user' });
  } catch (e) {
    return (e as { exitCode?: number }).exitCode ?? 2;
  }
  const o = program.opts<{ lab: string; vm: string; seed: number; disk?: string; intervalMs: number; batch: number; maxWrites?: number; stopWithParent?: boolean }>();
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (o.stopWithParent) {
    // No orphaned guests writing on after a test run or `npm start` died.
    process.stdin.on('close', stop).on('end', stop).on('error', stop).resume();
  }
  try {
    const r = await runGuestWriteLoad({
      labRoot: o.lab,
      vm: o.vm,
      seed: o.seed,
      diskId: o.disk,
      intervalMs: o.intervalMs,
      batch: o.batch,
      maxWrites: o.maxWrites,
      signal: ac.signal,
      onStarted: (info) => process.stdout.write(JSON.stringify({ event: 'started', pid: process.pid, seed: o.seed, ...info }) + '\n'),
    });
    process.stdout.write(JSON.stringify({ event: 'stopped', ...r }) + '\n');
    return 0;
  } catch (e) {
    process.stderr.write(`guest-write-load: ${(e as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
    if (o.stopWithParent) process.stdin.off('close', stop).off('end', stop).off('error', stop).pause();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => process.exit(code));
}
