// Runs the Hyper-V adapter against the fake pwsh in test/hyperv/fake-pwsh (put first on PATH).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HyperVHypervisor, type HyperVOptions } from '../../hypervisor/hyperv';

export const FAKE_DIR = path.join(__dirname, 'fake-pwsh');
export const FAKE_PWSH = path.join(FAKE_DIR, 'pwsh');

export interface Step {
  op: string;
  expectParams?: Record<string, unknown>;
  expectCmdlets?: string[];
  fixture?: string;
  result?: unknown;
  error?: Record<string, unknown>;
  raw?: string;
  stderr?: string;
  exitCode?: number;
  sleepMs?: number;
  banner?: boolean;
  /** Written to the script's recordPath (the checkpoint record) before the answer. */
  record?: { quiesced: 'pause' | 'save' | null; checkpointId: string | null };
}

export interface LoggedCall {
  n: number;
  op: string;
  params: Record<string, unknown>;
  script: string;
  mismatch?: string;
}

export interface Fake {
  adapter: HyperVHypervisor;
  dir: string;
  env: NodeJS.ProcessEnv;
  /** Every call the fake received, in order (mismatches included). */
  calls(): LoggedCall[];
  /** Steps the adapter did not (yet) consume. */
  remaining(): number;
  /** Replaces the scenario (keeps the RCT store and the log). */
  next(steps: Step[]): void;
}

export interface FakeScenario {
  /** Model the VM's power state from this one on (inspect answers with it). */
  vm?: { state: 'Running' | 'Paused' | 'Saved' | 'Off' };
  /** Answer in Windows PowerShell 5.1's shapes (dates, enums as numbers, {value,Count} arrays). */
  shape?: '5.1' | '7';
}

export function fakeHost(steps: Step[], opts: HyperVOptions = {}, scenarioOpts: FakeScenario = {}): Fake {
  fs.chmodSync(FAKE_PWSH, 0o755);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-hyperv-'));
  const scenario = path.join(dir, 'scenario.json');
  const log = path.join(dir, 'calls.jsonl');
  let total = 0;
  const next = (s: Step[]) => {
    fs.writeFileSync(scenario, JSON.stringify({ steps: s, ...scenarioOpts }));
    fs.rmSync(`${scenario}.next`, { force: true });
    total = s.length;
  };
  next(steps);
  const env = {
    ...process.env,
    PATH: `${FAKE_DIR}${path.delimiter}${process.env.PATH ?? ''}`,
    HVP_FAKE_SCENARIO: scenario,
    HVP_FAKE_LOG: log,
  };
  const adapter = new HyperVHypervisor({ hostName: 'HV01', env, stateDir: path.join(dir, 'rct'), timeoutMs: 20_000, ...opts });
  return {
    adapter,
    dir,
    env,
    calls: () =>
      fs.existsSync(log)
        ? fs
            .readFileSync(log, 'utf8')
            .split('\n')
            .filter(Boolean)
            .map((l) => JSON.parse(l) as LoggedCall)
        : [],
    remaining: () => {
      const used = fs.existsSync(`${scenario}.next`) ? Number(fs.readFileSync(`${scenario}.next`, 'utf8')) : 0;
      return total - used;
    },
    next,
  };
}

export const WIN_VM = '6f1c2a3b-0d4e-4f5a-8b9c-0123456789ab';
export const LINUX_VM = '1a2b3c4d-5e6f-4a1b-9c2d-3e4f5a6b7c8d';
export const CKPT = '0b5e6f7a-1c2d-4e3f-9a8b-7c6d5e4f3a2b';
/** A VM name that would run code if it were ever spliced into a command. */
export const NASTY_NAME = `Evil'; Stop-VM -Name * -Force; '$(Remove-Item C:\\ -Recurse)\`n"; $env:X [a]*?`;
