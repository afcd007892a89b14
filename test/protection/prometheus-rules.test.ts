// The alert rules shipped in deploy/prometheus are valid and fire as documented, checked by
// Prometheus's own promtool (Debian's prometheus package; npm's pretest installs it): rule syntax,
// then the rules' unit tests (a VM degrading OK -> WARNING -> CRITICAL, a point older than its
// RPO, a server that stops answering scrapes).
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const DIR = path.resolve(__dirname, '..', '..', 'deploy', 'prometheus');

function promtool(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync('promtool', args, { cwd: DIR, encoding: 'utf8' });
  if (r.error) throw new Error(`promtool is missing (${r.error.message}): apt-get install -y prometheus`);
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

test('promtool check rules accepts the rules file', () => {
  const r = promtool('check', 'rules', 'hvprotect-rules.yml');
  expect(r.out).toMatch(/SUCCESS: 6 rules found/);
  expect(r.status).toBe(0);
});

test('promtool test rules: each alert fires when, and only when, the tests say', () => {
  const r = promtool('test', 'rules', 'hvprotect-rules.test.yml');
  expect(r.out).toMatch(/SUCCESS/);
  expect(r.status).toBe(0);
});

test('the rules use only metrics the server exports', () => {
  const fs = require('node:fs') as typeof import('node:fs');
  const rules = fs.readFileSync(path.join(DIR, 'hvprotect-rules.yml'), 'utf8');
  const used = new Set(rules.match(/hvprotect_[a-z_]+/g));
  const { ProtectionMetrics } = require('../../metrics/metrics') as typeof import('../../metrics/metrics');
  const exported = new Set(new ProtectionMetrics().registry.getMetricsAsArray().map((m) => m.name));
  for (const name of used) expect(exported).toContain(name);
});
