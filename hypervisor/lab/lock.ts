// The lab lock: one lock file per lab root, taken by every process that changes the lab (agents,
// the CLI, guest write loads, tests). Cross-process exclusion is an O_EXCL create of the lock file;
// a holder that died is detected by its pid and its lock broken under a second, short-lived
// "breaker" lock, so two waiters can never both break it and delete a fresh lock by mistake.
//
// Lock file content (JSON): { pid, hostname, acquiredAt, purpose }.
//
// Within one process the lock is re-entrant along an async call chain (AsyncLocalStorage), and
// unrelated async tasks of the same process queue up behind each other before touching the file.
import { AsyncLocalStorage } from 'node:async_hooks';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';

export class LabLockTimeout extends Error {
  override readonly name = 'LabLockTimeout';
  constructor(readonly lockPath: string, readonly waitedMs: number, readonly holder: string) {
    super(`${lockPath}: still held after ${waitedMs} ms by ${holder}`);
  }
}

interface Holder {
  pid: number;
  hostname: string;
  acquiredAt: string;
  purpose: string;
}

const held = new AsyncLocalStorage<Set<string>>();
/** Per lock path: the tail of this process's queue of waiters. */
const queues = new Map<string, Promise<void>>();

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function readHolder(path: string): Promise<{ raw: string; holder?: Holder } | undefined> {
  let raw: string;
  try {
    raw = await fsp.readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    return { raw, holder: JSON.parse(raw) as Holder };
  } catch {
    return { raw }; // being written right now, or torn by a crash: judged by its age below
  }
}

async function tryCreate(path: string, purpose: string): Promise<boolean> {
  const body: Holder = { pid: process.pid, hostname: os.hostname(), acquiredAt: new Date().toISOString(), purpose };
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, 'wx');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  try {
    await fh.writeFile(JSON.stringify(body));
  } finally {
    await fh.close();
  }
  return true;
}

/** A lock is stale when its holder process is gone (same machine) or its file is unreadable and old. */
async function isStale(path: string, info: { raw: string; holder?: Holder }): Promise<boolean> {
  if (info.holder && typeof info.holder.pid === 'number') {
    if (info.holder.hostname !== os.hostname()) return false;
    return !processAlive(info.holder.pid);
  }
  try {
    const st = await fsp.stat(path);
    return Date.now() - st.mtimeMs > 5_000;
  } catch {
    return false;
  }
}

/** Break a stale lock, unless somebody else broke it (and maybe re-took it) first. */
async function breakStale(path: string, seen: string): Promise<void> {
  const breaker = `${path}.break`;
  if (!(await tryCreate(breaker, 'break'))) {
    const info = await readHolder(breaker);
    if (info && (await isStale(breaker, info))) {
      // A breaker died within its few-statement window; its own lock is simply removed.
      await fsp.rm(breaker, { force: true });
    }
    return;
  }
  try {
    const now = await readHolder(path);
    if (now && now.raw === seen) await fsp.rm(path, { force: true });
  } finally {
    await fsp.rm(breaker, { force: true });
  }
}

export interface LockOptions {
  /** What the holder is doing, written into the lock file for whoever waits. */
  purpose?: string;
  /** Give up after this long (default 120 s): a merge of a large AVHDX may hold the lock a while. */
  timeoutMs?: number;
}

/** Run `fn` holding the lock at `lockPath`; re-entrant along one async call chain. */
export async function withLock<T>(lockPath: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const mine = held.getStore();
  if (mine?.has(lockPath)) return fn();

  // Queue behind this process's other holders and waiters of the same lock.
  const before = queues.get(lockPath) ?? Promise.resolve();
  let done!: () => void;
  const turn = new Promise<void>((r) => (done = r));
  const tail = before.then(() => turn);
  queues.set(lockPath, tail);
  await before;
  try {
    await acquire(lockPath, opts);
    try {
      const set = new Set(mine ?? []);
      set.add(lockPath);
      return await held.run(set, fn);
    } finally {
      await fsp.rm(lockPath, { force: true });
    }
  } finally {
    done();
    if (queues.get(lockPath) === tail) queues.delete(lockPath);
  }
}

async function acquire(lockPath: string, opts: LockOptions): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const start = Date.now();
  let delay = 1;
  for (;;) {
    if (await tryCreate(lockPath, opts.purpose ?? 'lab')) return;
    const info = await readHolder(lockPath);
    if (info && (await isStale(lockPath, info))) {
      await breakStale(lockPath, info.raw);
      continue;
    }
    const waited = Date.now() - start;
    if (waited > timeoutMs) throw new LabLockTimeout(lockPath, waited, info?.raw ?? '(gone)');
    await sleep(delay + Math.random() * delay);
    delay = Math.min(delay * 2, 20);
  }
}

/** True when the current async call chain holds the lock at `lockPath`. */
export function holdsLock(lockPath: string): boolean {
  return held.getStore()?.has(lockPath) ?? false;
}
