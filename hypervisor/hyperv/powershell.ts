// Runs one PowerShell script in a fresh `pwsh` / `powershell.exe` and returns its JSON result.
//
// Transport: `<exe> -NoProfile -NonInteractive -Command -` with ONE line on stdin:
//
//   & ([ScriptBlock]::Create([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('<script>'))))
//
// One line, because `-Command -` executes stdin line by line and a multi-line block can stall
// waiting for a blank line; base64 because the alphabet [A-Za-z0-9+/=] cannot end a '…' literal.
// The script itself never contains caller values: they travel as base64 JSON and are read with
// ConvertFrom-Json inside the script (see `scripts.ts`), so a VM named `a'; Stop-VM *; '$x` is
// data, never code.
//
// Output protocol: the script prints exactly one line `HVPROTECT-JSON:<json>` where json is
// `{ ok: true, result }` or `{ ok: false, error: { type, message, cmdlet, step, ... } }`.
// Anything else on stdout (banners, prompts, warnings) is ignored; stderr is kept for messages.

import { spawn } from 'node:child_process';
import { HypervisorError, HypervisorErrorType } from '../types';

export const RESULT_MARKER = 'HVPROTECT-JSON:';

/** Single-quoted PowerShell literal: the only special character inside '…' is ' (doubled). */
export function psQuote(value: string): string {
  // PowerShell also treats the typographic quotes ‘ ’ ‚ ‛ as single quotes inside '…'.
  return "'" + value.replace(/['\u2018\u2019\u201A\u201B]/g, (q) => q + q) + "'";
}

/** Base64 of UTF-8 JSON: safe inside a single-quoted literal whatever the values hold. */
export function encodeParams(params: unknown): string {
  return Buffer.from(JSON.stringify(params), 'utf8').toString('base64');
}

export function bootstrapLine(script: string): string {
  const b64 = Buffer.from(script, 'utf8').toString('base64');
  return `& ([ScriptBlock]::Create([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('${b64}'))))\n`;
}

export interface PowerShellOptions {
  /** Executable: a path, or a name looked up on PATH ("pwsh", "powershell.exe"). */
  executable: string;
  /** Milliseconds before the process is killed and the call fails. */
  timeoutMs: number;
  env?: NodeJS.ProcessEnv;
}

export interface ScriptError {
  type?: string;
  message?: string;
  cmdlet?: string;
  step?: string;
  [k: string]: unknown;
}

interface Envelope {
  ok: boolean;
  result?: unknown;
  error?: ScriptError;
}

const STDERR_LINES = 5;

function firstLines(text: string, n = STDERR_LINES): string {
  return text
    .split(/\r?\n/)
    .map((l) => l.trimEnd())
    // pwsh serialises progress/information records as CLIXML on a redirected stderr.
    .filter((l) => l.length > 0 && !l.startsWith('#< CLIXML') && !l.startsWith('<Objs '))
    .slice(0, n)
    .join('\n');
}

function parseEnvelope(stdout: string): Envelope | undefined {
  const lines = stdout.split(/\r?\n/);
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i].replace(/^\uFEFF/, '');
    if (!line.startsWith(RESULT_MARKER)) continue;
    try {
      return JSON.parse(line.slice(RESULT_MARKER.length)) as Envelope;
    } catch {
      return undefined;
    }
  }
  return undefined;
}

const KNOWN_TYPES = new Set<string>(Object.values(HypervisorErrorType));

/**
 * Runs `script` and returns the `result` of its envelope. `op` names the operation in errors.
 * Failures: a script-reported error keeps its type (VmNotFound, VmNotOnHost, CheckpointNotFound…);
 * a non-zero exit, a missing envelope, a spawn failure or a timeout is HypervisorCommandFailed
 * with the cmdlet (when the script said which), the exit code and stderr's first lines.
 */
export function runPowerShell(op: string, script: string, opts: PowerShellOptions): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(opts.executable, ['-NoProfile', '-NonInteractive', '-Command', '-'], {
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      windowsHide: true,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      fn();
    };
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);

    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e: NodeJS.ErrnoException) =>
      finish(() =>
        reject(
          new HypervisorError(
            'HypervisorCommandFailed',
            `${op}: cannot run PowerShell '${opts.executable}': ${e.message}`,
            { op, executable: opts.executable, code: e.code },
          ),
        ),
      ),
    );
    // A child that dies before reading stdin gives EPIPE; the exit handler reports it.
    child.stdin.on('error', () => undefined);
    child.on('close', (code, signal) =>
      finish(() => {
        const stdout = Buffer.concat(out).toString('utf8');
        const stderr = Buffer.concat(err).toString('utf8');
        const elapsedMs = Date.now() - started;
        if (timedOut) {
          reject(
            new HypervisorError(
              'HypervisorCommandFailed',
              `${op}: PowerShell did not finish within ${opts.timeoutMs} ms and was killed`,
              { op, timedOut: true, timeoutMs: opts.timeoutMs, stderr: firstLines(stderr) },
            ),
          );
          return;
        }
        const env = parseEnvelope(stdout);
        if (env && env.ok === false) {
          const e = env.error ?? {};
          const type = e.type && KNOWN_TYPES.has(e.type) ? (e.type as HypervisorErrorType) : 'HypervisorCommandFailed';
          const where = e.cmdlet ? `${e.cmdlet} failed` : 'failed';
          reject(
            new HypervisorError(type, `${op}: ${where}: ${e.message ?? 'no message'}`, {
              ...e,
              op,
              exitCode: code,
              stderr: firstLines(stderr),
            }),
          );
          return;
        }
        // The result line is authoritative: with -Command - the exit code only mirrors $? of the
        // last statement, which a handled error inside the script can leave false.
        if (env && env.ok === true) {
          resolve(env.result);
          return;
        }
        if (code !== 0 || !env) {
          const why = code !== 0 ? `exit code ${code ?? signal}` : 'no result line in its output';
          const detail = firstLines(stderr) || firstLines(stdout);
          reject(
            new HypervisorError('HypervisorCommandFailed', `${op}: PowerShell failed (${why})${detail ? `: ${detail}` : ''}`, {
              op,
              exitCode: code,
              signal,
              stderr: firstLines(stderr),
              elapsedMs,
            }),
          );
          return;
        }
        resolve(env.result);
      }),
    );
    child.stdin.end(bootstrapLine(script));
  });
}
