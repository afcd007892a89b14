// Durable file writes: temp file -> fsync -> rename -> fsync of the folder. A reader sees the
// old file or the new one, never a torn one, and after the folder fsync the rename survives a
// power cut.
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
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
 */
export function syncFileSystem(dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('sync', ['-f', dir], (err) => (err ? reject(err) : resolve()));
  });
}
