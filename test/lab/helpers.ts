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
