// Durable file writes: temp file -> fsync -> rename -> fsync of the folder. A reader sees the
// old file or the new one, never a torn one, and after the folder fsync the rename survives a
// power cut.
import { randomBytes } from 'node:crypto';
import { type ChildProcessWithoutNullStreams, execFile, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

export const TEMP_MARK = '.tmp-';

// Unique per process and call; cheaper than random bytes on the chunk write path.
const TEMP_PREFIX = `${process.pid.toString(36)}-${randomBytes(3).toString('hex')}-`;
let tempCounter = 0;

export function tempNameFor(target: string): string {
  return `${target}${TEMP_MARK}${TEMP_PREFIX}${(tempCounter++).toString(36)}`;
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * The one way a file is written in place of another: temp -> (fsync) -> rename -> (fsync of the
 * folder). `fsync: false` keeps the atomic rename but skips both syncs, for files rewritten on
 * every call whose loss to a power cut costs only a retry (the backup session's state).
 */
export async function writeFileDurable(target: string, data: Buffer | string, opts: { fsync?: boolean } = {}): Promise<void> {
  const sync = opts.fsync !== false;
  const tmp = tempNameFor(target);
  const fh = await fs.open(tmp, 'wx', 0o640);
  try {
    await fh.writeFile(data);
    if (sync) await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fs.rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  try {
    await fs.rename(tmp, target);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
  if (sync) await fsyncDir(path.dirname(target));
}

/** Append one line and fsync it (the deletion log). */
export async function appendLineDurable(file: string, line: string): Promise<void> {
  const fh = await fs.open(file, 'a', 0o640);
  try {
    await fh.write(line.endsWith('\n') ? line : `${line}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * syncfs(2) of the file system holding `dir` (coreutils `sync -f`): one call makes every chunk
 * written since the last commit durable, instead of one fsync per chunk file.
 *
 * Node has no syncfs, so `sync -f` runs it. Spawned from the protection server each time, it cost
 * the server's main thread ~10 ms per call (a fork of a process of ~280 MB; CPU profile of
 * bench/backup-e2e, 2 Dec: 79 ms for six commits): a commit and the chunk store's write-behind
 * call it. So one small shell is kept per process, and each call is a line to it: the shell
 * forks `sync`, not us. Calls are answered in order. A helper that died is started again at the
 * next call; a folder whose name holds a newline goes the old way.
 */
export function syncFileSystem(dir: string): Promise<void> {
  if (dir.includes('\n')) return syncOnce(dir);
  return syncHelper().run(dir);
}

function syncOnce(dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('sync', ['-f', dir], (err) => (err ? reject(err) : resolve()));
  });
}

// One line in ("DIR"), one line out ("0", or the exit code and sync's message on one line).
const SYNC_LOOP = 'while IFS= read -r d; do if out=$(sync -f -- "$d" 2>&1); then echo 0; else printf "%s %s\\n" "$?" "$(printf %s "$out" | tr "\\n" " ")"; fi; done';

class SyncHelper {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly waiting: Array<{ dir: string; resolve: () => void; reject: (err: Error) => void }> = [];
  private buffered = '';
  dead = false;

  constructor() {
    this.child = spawn('sh', ['-c', SYNC_LOOP], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (text: string) => this.answer(text));
    this.child.stderr.resume();
    this.child.on('error', (err) => this.fail(err));
    this.child.on('exit', (code, signal) => this.fail(new Error(`the syncfs helper (sh) ended (${signal ?? `exit ${code}`})`)));
    this.child.stdin.on('error', (err) => this.fail(err));
    this.idle();
  }

  /** Pid of the shell (tests). */
  get pid(): number | undefined {
    return this.child.pid;
  }

  run(dir: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ dir, resolve, reject });
      if (this.waiting.length === 1) this.busy();
      this.child.stdin.write(`${dir}\n`);
    });
  }

  private answer(text: string): void {
    this.buffered += text;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      const w = this.waiting.shift();
      if (!w) continue;
      if (line === '0') w.resolve();
      else w.reject(new Error(`Command failed: sync -f ${w.dir}: ${line.replace(/^\d+ /, '').trim()} (exit ${line.split(' ')[0]})`));
    }
    if (this.waiting.length === 0) this.idle();
  }

  private fail(err: Error): void {
    if (this.dead) return;
    this.dead = true;
    this.child.kill();
    for (const w of this.waiting.splice(0)) w.reject(err);
  }

  // The helper never keeps the process alive by itself, only while a call waits for it.
  private busy(): void {
    (this.child.stdout as unknown as { ref(): void }).ref();
  }

  private idle(): void {
    this.child.unref();
    (this.child.stdout as unknown as { unref(): void }).unref();
    (this.child.stderr as unknown as { unref(): void }).unref();
    (this.child.stdin as unknown as { unref(): void }).unref();
  }
}

let helper: SyncHelper | undefined;

function syncHelper(): SyncHelper {
  if (!helper || helper.dead) helper = new SyncHelper();
  return helper;
}

/** The pid of this process's syncfs helper, if one runs (tests). */
export function syncHelperPid(): number | undefined {
  return helper && !helper.dead ? helper.pid : undefined;
}
