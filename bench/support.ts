// Helpers the benchmarks share.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Client } from '@temporalio/client';
import { temporal as proto } from '@temporalio/proto';

export { prng } from '../test/support/prng';

/** The median (the mean of the middle two for an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** A process's resident and peak resident memory in MiB (Linux /proc), undefined once it is gone. */
export function procStatus(pid: number): { rss: number; hwm: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /VmRSS:\s+(\d+) kB/.exec(s);
    const hwm = /VmHWM:\s+(\d+) kB/.exec(s);
    return { rss: rss ? Number(rss[1]) / 1024 : NaN, hwm: hwm ? Number(hwm[1]) / 1024 : NaN };
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) a process used so far, itself and its waited-for children. */
export function cpuSeconds(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    // fields 14..17 (1-based) = utime stime cutime cstime; rest[0] is field 3
    const ticks = [11, 12, 13, 14].reduce((s, i) => s + Number(rest[i]), 0);
    return ticks / 100;
  } catch {
    return NaN;
  }
}

/** Waits until a worker polls each task queue (workflow or activity side), or throws after timeoutMs. */
export async function waitForPollers(client: Client, namespace: string, queues: Array<{ name: string; kind: 'workflow' | 'activity' }>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (const { name, kind } of queues) {
    for (;;) {
      const r = await client.workflowService.describeTaskQueue({
        namespace,
        taskQueue: { name, kind: proto.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
        taskQueueType: kind === 'workflow' ? proto.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW : proto.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
      });
      if ((r.pollers ?? []).length > 0) break;
      if (Date.now() > deadline) throw new Error(`nobody polls ${name} after ${timeoutMs} ms`);
      await new Promise((res) => setTimeout(res, 250));
    }
  }
}

/**
 * A benchmark child process that answers over IPC; `next()` is its next message. Node flags in
 * HVP_BENCH_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") go to it.
 */
export function forkChild(script: string, childArgs: string[]): { proc: ChildProcess; next: () => Promise<Record<string, unknown>> } {
  const execArgv = (process.env.HVP_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const proc = fork(script, childArgs, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv });
  const queue: Array<Record<string, unknown>> = [];
  const waiters: Array<(m: Record<string, unknown>) => void> = [];
  proc.on('message', (m) => {
    const w = waiters.shift();
    if (w) w(m as Record<string, unknown>);
    else queue.push(m as Record<string, unknown>);
  });
  const next = () =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const q = queue.shift();
      if (q) return resolve(q);
      waiters.push(resolve);
      proc.once('exit', (code) => code !== 0 && reject(new Error(`child exited with ${code}`)));
    });
  return { proc, next };
}

/** Runs a command under /usr/bin/time -v; returns wall time and peak RSS. */
export function timed(cmd: string, cmdArgs: string[], env: NodeJS.ProcessEnv, cwd?: string): Promise<{ wallMs: number; maxRssMiB: number }> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const p = spawn('/usr/bin/time', ['-v', cmd, ...cmdArgs], { env, cwd, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    p.on('exit', (code) => {
      const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
      if (code !== 0) return reject(new Error(`${cmd} ${cmdArgs.join(' ')} failed: ${err.slice(-2000)}`));
      const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(err);
      resolve({ wallMs, maxRssMiB: m ? Number(m[1]) / 1024 : NaN });
    });
  });
}
