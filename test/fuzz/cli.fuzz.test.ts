// Hostile command lines, fuzzed: random argv, flags with missing or garbage values, unknown
// commands, very long arguments, "--" tricks, sizes like -1GB, 1e400% or UNBOUNDED2.
// In process (buildProgram, actions replaced by no-ops): parsing ends in a commander usage error,
// never another exception. Spawned (the built CLI, Temporal on a closed port, an empty server
// folder): exit code 0, 1 or 2, stderr one "hvprotect: …" line or commander's usage text, never a
// stack trace or a hang.
import { spawn } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import { Command, CommanderError } from 'commander';
import { buildProgram } from '../../client/cli';

const SEED = 180_2026;
const CLI = path.resolve(__dirname, '../../dist/client/cli.js');
/** Commands that start long-running processes or touch a lab: not fuzzed. */
const NOT_FUZZED = new Set(['dev', 'server', 'agent', 'lab']);

function allCommands(c: Command): Command[] {
  return [c, ...c.commands.flatMap((s) => allCommands(s))];
}

/** The command paths and their long flags, from the program itself. */
function commandTable(): Array<{ path: string[]; flags: string[] }> {
  const out: Array<{ path: string[]; flags: string[] }> = [];
  const walk = (c: Command, p: string[]) => {
    if (p.length && NOT_FUZZED.has(p[0])) return;
    out.push({ path: p, flags: c.options.map((o) => o.long ?? o.short ?? '').filter(Boolean) });
    for (const s of c.commands) walk(s, [...p, s.name()]);
  };
  walk(buildProgram(), []);
  return out;
}

const table = commandTable();
const allFlags = [...new Set(table.flatMap((t) => t.flags))];

const hostileValue = fc.oneof(
  fc.constantFrom('-1GB', '1e400%', 'UNBOUNDED2', 'UNBOUNDED', '0', '-1', '1e400', 'NaN', 'Infinity', '0x10', '99999999999999999999', '99999999999999999999EB', '15%', '0%', '101%', '1.5TB',
    '', ' ', '--', '-', '--json', '../../../etc/passwd', '/dev/null', '/nonexistent/x', 'a\u0000b', '\u202e', '💩', 'x'.repeat(10_000), '1'.repeat(5000) + 'GB', '25:99', '02:00,', 'HH:MM', '-5', '448', '449', '2147483648',
    'http://127.0.0.1:1', 'https://127.0.0.1:1', 'ftp://x', 'not a url', 'web01', '20261124T154130.123Z', '--for=x', '--maxsize='),
  fc.string({ maxLength: 30 }),
  fc.string({ unit: 'binary', maxLength: 30 }).map((s) => s.replace(/\u0000/g, '')),
);

const argToken = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...allFlags) },
  { weight: 3, arbitrary: hostileValue },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom(...allFlags), hostileValue).map(([f, v]) => `${f}=${v}`) },
  { weight: 1, arbitrary: fc.constantFrom('--', '-', '---', '-h', '--help', '-V', '--no-json', '--json=false', '-abc', '--unknown-flag', '--for', '--maxsize') },
);

/** argv after "node cli.js": a known command path (or a random word) and random tokens. */
const argv = fc.tuple(
  fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...table.map((t) => t.path)) }, { weight: 1, arbitrary: fc.array(fc.oneof(hostileValue, fc.constantFrom('help', 'status', 'rp', 'Status', 'protect')), { maxLength: 2 }) }),
  fc.array(argToken, { maxLength: 8 }),
).map(([p, rest]) => [...p, ...rest]).filter((a) => !NOT_FUZZED.has(a[0]) && !(a[0] === 'help' && NOT_FUZZED.has(a[1] ?? '')));

describe('CLI arguments, parsed in process', () => {
  it('end in success or a commander usage error, never another exception', async () => {
    const unexpected: string[] = [];
    await fc.assert(
      fc.asyncProperty(argv, async (args) => {
        const program = buildProgram();
        let errText = '';
        for (const c of allCommands(program)) {
          c.exitOverride();
          c.configureOutput({ writeOut: () => undefined, writeErr: (s) => void (errText += s), outputError: (s, write) => write(s) });
          // Only parsing is under test: no action may connect to anything or start anything.
          if (c !== program) c.action(() => undefined);
        }
        try {
          await program.parseAsync(['node', 'hvprotect', ...args]);
        } catch (err) {
          if (!(err instanceof CommanderError)) unexpected.push(`${JSON.stringify(args).slice(0, 300)}: ${(err as Error).name}: ${(err as Error).message.slice(0, 200)}`);
          else if (!['commander.helpDisplayed', 'commander.help', 'commander.version'].includes(err.code) && !/^error: /.test(errText)) {
            unexpected.push(`${JSON.stringify(args).slice(0, 300)}: usage error without an "error:" line: ${errText.slice(0, 200)}`);
          }
        }
      }),
      { seed: SEED, numRuns: 600 },
    );
    expect([...new Set(unexpected)]).toEqual([]);
  });
});

interface Run { code: number | null; signal: string | null; stdout: string; stderr: string; ms: number }

function runCli(args: string[], env: NodeJS.ProcessEnv, cwd: string, timeoutMs = 25_000): Promise<Run> {
  return new Promise((resolve) => {
    const start = Date.now();
    // The OS cannot pass a NUL inside an argument: it ends the argument there.
    const child = spawn(process.execPath, [CLI, ...args.map((a) => a.split('\u0000')[0])], { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    child.on('error', (err) => resolve({ code: -1, signal: null, stdout: '', stderr: `spawn failed: ${err.message}`, ms: Date.now() - start }));
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - start });
    });
  });
}

/** What is wrong with a run's outcome, or undefined. */
function judge(r: Run): string | undefined {
  if (r.signal) return `killed by ${r.signal} after ${r.ms} ms (a hang)`;
  if (r.code !== 0 && r.code !== 1 && r.code !== 2) return `exit code ${r.code}`;
  if (/^\s+at .+:\d+:\d+\)?$/m.test(r.stderr)) return `stack trace on stderr: ${r.stderr.slice(0, 400)}`;
  if (r.code === 0) return undefined;
  const lines = r.stderr.replace(/\n$/, '').split('\n');
  if (r.stderr.startsWith('hvprotect: ')) return lines.length === 1 ? undefined : `more than one line: ${r.stderr.slice(0, 400)}`;
  if (/^error: /.test(r.stderr) && r.code === 2) return undefined; // commander's usage text
  return `stderr neither "hvprotect: …" nor usage (exit ${r.code}): ${JSON.stringify(r.stderr.slice(0, 400))}`;
}

describe('CLI arguments, the built CLI', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} missing: run npx tsc -p . first`);
    dir = await mkdtemp(path.join(tmpdir(), 'hvp-fuzz-cli-'));
    await fs.mkdir(path.join(dir, 'server'));
    await fs.mkdir(path.join(dir, 'home'));
    await fs.mkdir(path.join(dir, 'cwd'));
    env = {
      PATH: process.env.PATH,
      HOME: path.join(dir, 'home'),
      TEMPORAL_ADDRESS: '127.0.0.1:1',
      HVPROTECT_SERVER_DIR: path.join(dir, 'server'),
      NO_COLOR: '1',
    };
  });
  afterAll(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('exits 0, 1 or 2 with one error line or usage text, no stack trace, no hang (60 runs)', async () => {
    const samples = fc.sample(argv, { seed: SEED + 1, numRuns: 48 });
    const fixed: string[][] = [
      ['shadowstorage', 'add', '--for', 'web01', '--maxsize', '-1GB'],
      ['shadowstorage', 'resize', '--for', 'web01', '--maxsize', '1e400%'],
      ['protect', 'add', 'web01', '--maxsize', 'UNBOUNDED2'],
      ['protect', 'add', 'web01', '--max-points', '1e400'],
      ['doctor', '--timeout', 'abc'],
      ['doctor', '--timeout', '-1'],
      ['status', '--limit'],
      ['restore', '--', '--rp'],
      ['x'.repeat(100_000)],
      ['verify', '--storage-url', 'not a url', '--admin-token-file', '/nonexistent'],
      ['gc', '--storage-url', 'http://127.0.0.1:1'],
      ['token', 'revoke', '../../etc/passwd', '--storage-url', 'http://127.0.0.1:1'],
    ];
    const runs = [...fixed, ...samples];
    const problems: string[] = [];
    let next = 0;
    const worker = async () => {
      while (next < runs.length) {
        const args = runs[next++];
        const r = await runCli(args, env, path.join(dir, 'cwd'));
        const p = judge(r);
        if (p) problems.push(`${JSON.stringify(args).slice(0, 200)}: ${p}`);
      }
    };
    await Promise.all(Array.from({ length: 6 }, worker));
    expect(problems).toEqual([]);
    // Values the CLI can tell are wrong are usage errors (exit 2) at once, before any connection.
    for (const args of [['doctor', '--timeout', 'abc'], ['doctor', '--timeout', '1e400'], ['doctor', '--timeout', '-1'], ['verify', '--storage-url', '::::'], ['gc', '--storage-url', 'ftp://x']]) {
      const r = await runCli(args, { ...env, HVPROTECT_ADMIN_TOKEN: 'hvp_x' }, path.join(dir, 'cwd'));
      expect({ args, code: r.code, problem: judge(r) }).toEqual({ args, code: 2, problem: undefined });
    }
    // Nothing was created beside the empty server folder.
    expect(await fs.readdir(path.join(dir, 'server'))).toEqual([]);
  });

  it('prints a stack trace only with HVPROTECT_DEBUG', async () => {
    const args = ['verify', '--storage-url', 'http://127.0.0.1:1'];
    const plain = await runCli(args, { ...env, HVPROTECT_ADMIN_TOKEN: 'hvp_x' }, path.join(dir, 'cwd'));
    expect(judge(plain)).toBeUndefined();
    expect(plain.code).toBe(1);
    const debug = await runCli(args, { ...env, HVPROTECT_ADMIN_TOKEN: 'hvp_x', HVPROTECT_DEBUG: '1' }, path.join(dir, 'cwd'));
    expect(debug.stderr).toMatch(/^hvprotect: /);
    expect(debug.stderr).toMatch(/\n\s+at /);
  });
});
