// The CLI as its own process (`node dist/client/cli.js …`), pointed at a test stack's Temporal
// namespace and payload key: what an administrator's shell would run. Never throws on a non-zero
// exit: tests assert the code and what it printed.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import type { TestStack } from './stack';

export const CLI = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
const run = promisify(execFile);

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function runCli(stack: Pick<TestStack, 'temporal'>, args: string[], o: { timeoutMs?: number } = {}): Promise<CliResult> {
  try {
    const r = await run(process.execPath, [CLI, ...args], {
      env: { ...process.env, TEMPORAL_ADDRESS: stack.temporal.address, TEMPORAL_NAMESPACE: stack.temporal.namespace, HVPROTECT_PAYLOAD_KEY_FILE: stack.temporal.payloadKeyFile ?? '' },
      timeout: o.timeoutMs ?? 0,
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}
