import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Lab } from '../../hypervisor/lab';
import { HypervisorError } from '../../hypervisor/types';

export const MiB = 1024 * 1024;

export async function tempLab(prefix = 'hvp-lab-'): Promise<{ lab: Lab; root: string; cleanup: () => Promise<void> }> {
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  const lab = await Lab.open(root);
  return { lab, root, cleanup: () => fsp.rm(root, { recursive: true, force: true }) };
}

/** Expect a HypervisorError of `type`; returns it for further checks. */
export async function expectHvError(p: Promise<unknown>, type: string, message?: RegExp): Promise<HypervisorError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(HypervisorError);
  const he = err as HypervisorError;
  expect(he.type).toBe(type);
  if (message) expect(he.message).toMatch(message);
  return he;
}

export async function waitFor(cond: () => Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function readAll(reader: { virtualSize: number; read(o: number, l: number): Promise<Buffer> }): Promise<Buffer> {
  return reader.read(0, reader.virtualSize);
}

/** Byte-for-byte equality with a useful message (jest's toEqual on MiB-sized buffers is very slow). */
export function expectSameBytes(actual: Buffer, expected: Buffer, what = 'content'): void {
  if (actual.length !== expected.length) throw new Error(`${what}: ${actual.length} bytes, expected ${expected.length}`);
  if (actual.equals(expected)) return;
  let i = 0;
  while (actual[i] === expected[i]) i++;
  throw new Error(`${what}: first difference at byte ${i} (0x${i.toString(16)})`);
}

/** Run `main(argv)` of a TypeScript file in a child process (transpiled on the fly, as jest does). */
export function spawnTsMain(
  file: string,
  args: string[],
  stdio: import('node:child_process').StdioOptions = ['ignore', 'inherit', 'inherit'],
  env: NodeJS.ProcessEnv = {},
): import('node:child_process').ChildProcess {
  const entry = `
    const fs = require('fs'); const swc = require(process.env.HVP_LAB_SWC);
    require.extensions['.ts'] = (m, f) => m._compile(swc.transformSync(fs.readFileSync(f, 'utf8'), { filename: f,
      jsc: { target: 'es2022', parser: { syntax: 'typescript' } }, module: { type: 'commonjs' } }).code, f);
    const script = process.argv[1]; process.argv.splice(1, 1);
    require(script).main(process.argv.slice(1)).then((c) => process.exit(c), (e) => { console.error(e); process.exit(1); });`;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { spawn } = require('node:child_process') as typeof import('node:child_process');
  return spawn(process.execPath, ['-e', entry, file, ...args], {
    stdio,
    env: { ...process.env, ...env, HVP_LAB_SWC: require.resolve('@swc/core') },
  });
}

export function exitOf(child: import('node:child_process').ChildProcess): Promise<number | string> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode ?? child.signalCode!);
    child.on('exit', (code, signal) => resolve(code ?? signal!));
  });
}
