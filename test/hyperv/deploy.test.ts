// The service definitions in deploy/: the server's systemd unit (verified by systemd-analyze where
// the machine has it) and the agent's WinSW definition for Windows (well-formed, and every option
// it passes is one the CLI's command accepts, with an allowed value). What Linux cannot show: that
// WinSW starts it, which deploy/README.md lists under what has not been run.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'client', 'cli.js');
const UNIT = path.join(ROOT, 'deploy', 'systemd', 'hvprotect-server.service');
const WINSW = path.join(ROOT, 'deploy', 'windows', 'hvprotect-agent.xml');

/** `--flag value` pairs of a command line (values may be quoted). */
function options(commandLine: string): Map<string, string | true> {
  const words = [...commandLine.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]);
  const out = new Map<string, string | true>();
  for (let i = 0; i < words.length; i++) {
    if (!words[i].startsWith('--')) continue;
    const next = words[i + 1];
    out.set(words[i], next !== undefined && !next.startsWith('--') ? next : true);
  }
  return out;
}

function helpOf(command: string): string {
  return execFileSync(process.execPath, [CLI, command, '--help'], { encoding: 'utf8' });
}

function expectAccepted(command: string, commandLine: string): void {
  // Help text wraps: one line per option, whitespace collapsed.
  const entries = helpOf(command).replace(/\s+/g, ' ').split(/ (?=--[a-z])/);
  for (const [flag, value] of options(commandLine)) {
    const entry = entries.find((e) => e.startsWith(`${flag} `));
    expect(entry).toBeDefined();
    const choices = /\(choices: ([^)]*)\)/.exec(entry!);
    if (choices && value !== true) expect(choices[1].split(', ').filter((c) => c.startsWith('"')).map((c) => c.replace(/"/g, ''))).toContain(value);
  }
}

describe('deploy/', () => {
  test('the systemd unit of the server runs `server` with options the CLI accepts', () => {
    const unit = fs.readFileSync(UNIT, 'utf8');
    const exec = /^ExecStart=\/usr\/bin\/env node \S+\/dist\/client\/cli\.js server (.*)$/m.exec(unit);
    expect(exec).not.toBeNull();
    expectAccepted('server', exec![1]);
    expect(unit).toMatch(/^Restart=on-failure$/m);
    expect(unit).toMatch(/^KillSignal=SIGTERM$/m);
    expect(unit).toMatch(/^WantedBy=multi-user\.target$/m);
  });

  const analyze = spawnSync('systemd-analyze', ['--version']).status === 0;
  (analyze ? test : test.skip)('systemd-analyze verify finds nothing wrong with the unit', () => {
    const r = spawnSync('systemd-analyze', ['verify', UNIT], { encoding: 'utf8' });
    expect(r.stderr.split('\n').filter((l) => l.includes(path.basename(UNIT)))).toEqual([]);
    expect(r.status).toBe(0);
  });

  test('the WinSW definition of the agent: well-formed, Hyper-V first, `agent --hypervisor hyperv` with options the CLI accepts', () => {
    const xml = fs.readFileSync(WINSW, 'utf8');
    // XML comments may not contain "--"; every element opened is closed.
    for (const c of xml.match(/<!--[\s\S]*?-->/g) ?? []) expect(c.slice(4, -3)).not.toContain('--');
    const body = xml.replace(/<!--[\s\S]*?-->/g, '');
    const stack: string[] = [];
    for (const m of body.matchAll(/<(\/?)([A-Za-z]+)[^>]*?(\/?)>/g)) {
      if (m[3] === '/') continue;
      if (m[1] === '/') expect(stack.pop()).toBe(m[2]);
      else stack.push(m[2]);
    }
    expect(stack).toEqual([]);
    const el = (name: string) => [...body.matchAll(new RegExp(`<${name}>([^<]*)</${name}>`, 'g'))].map((m) => m[1]);
    expect(el('id')).toEqual(['hvprotect-agent']);
    expect(el('depend')).toEqual(['vmms', 'Winmgmt']);
    expect(el('executable')[0]).toMatch(/\\node\.exe$/);
    const args = el('arguments')[0];
    expect(args).toMatch(/^"[^"]+\\dist\\client\\cli\.js" agent /);
    expect(options(args).get('--hypervisor')).toBe('hyperv');
    expectAccepted('agent', args.replace(/^"[^"]+" agent /, ''));
  });
});
