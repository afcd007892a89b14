// Protection status and its alerts, against the real dev server (protection/status.ts, the
// protection workflow's watcher, activities/server/alerts.ts, the server's gauges):
// - a VM on an accelerated RPO (75 s: 45 s left too short an OK window to read on a loaded CI machine) goes OK -> WARNING when a backup fails -> CRITICAL past
//   twice the RPO -> OK after a good backup; a webhook receiver in the test gets exactly one
//   signed alert per change, in order, with ids that a receiver can dedupe by;
// - the CLI's `status --protection --json` and the server's /metrics say the same;
// - manual backups are the protection's runs (the last run shown);
// - a schedule in Europe/Berlin runs once a day at the local time, across both daylight-saving
//   changes of 2027 (Temporal's own computation of the next times).
import { createHmac, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { runCli, type CliResult } from '../support/cli';
import { startTestStack, type TestStack } from '../support/stack';
import { protectVm, startBackupNow, describeProtection, setProtectionPolicy } from '../../client/protection';
import type { ProtectionAlert } from '../../activities/server/alerts';

const MiB = 1024 * 1024;
const SECRET = 'test-webhook-secret';

let stack: TestStack;
let receiver: http.Server;
let receiverUrl: string;
const received: Array<{ alert: ProtectionAlert; id: string; valid: boolean }> = [];
let refuseNext = 0;

function hvp(...args: string[]): Promise<CliResult> {
  return runCli(stack, args);
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 90_000): Promise<T> {
  for (const deadline = Date.now() + ms; ; ) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function cliLevel(vm: string): Promise<string | undefined> {
  const rows = JSON.parse((await hvp('status', '--protection', '--json')).stdout) as Array<{ vm: string; level: string }>;
  return rows.find((r) => r.vm === vm)?.level;
}

async function gauge(ds: string): Promise<number | undefined> {
  const text = await (await fetch(stack.server.metricsUrl!)).text();
  const m = new RegExp(`^hvprotect_protection_status\\{datasource="${ds}",group="",server="${stack.server.id}"\\} (\\d)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

beforeAll(async () => {
  receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      // The first delivery of an alert can be refused: the retry must bring it, once.
      if (refuseNext > 0) {
        refuseNext--;
        res.writeHead(503).end();
        return;
      }
      const ts = String(req.headers['x-hvprotect-timestamp']);
      const want = Buffer.from(`sha256=${createHmac('sha256', SECRET).update(`${ts}.${body}`).digest('hex')}`);
      const got = Buffer.from(String(req.headers['x-hvprotect-signature']));
      const valid = want.length === got.length && timingSafeEqual(want, got) && Math.abs(Date.now() / 1000 - Number(ts)) < 300;
      const id = String(req.headers['x-hvprotect-alert-id']);
      if (!received.some((r) => r.id === id)) received.push({ alert: JSON.parse(body), id, valid });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', () => r()));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hooks/hvprotect`;
  stack = await startTestStack({ hosts: ['hv01'], alertWebhook: { url: receiverUrl, secret: SECRET }, protectionStatesIntervalMs: 500 });
}, 180_000);

afterAll(async () => {
  await stack?.stop();
  await new Promise((r) => receiver?.close(r));
});

test('OK -> WARNING -> CRITICAL -> OK on an accelerated RPO: one signed alert per change; CLI and /metrics agree', async () => {
  const facts = await stack.lab.createVm({ name: 'st1', host: 'hv01', disks: [{ sizeBytes: 4 * MiB, content: { kind: 'random', seed: 5, fill: 0.5 } }] });
  await protectVm(stack.client, { server: stack.server.id, vm: { vmId: facts.vmId, name: 'st1', host: 'hv01', state: 'running' }, dataSource: 'st1', schedule: { everyHours: 24, rpoMs: 75_000 } });

  // A good backup (manual: the protection's run, shown as its last).
  const first = await startBackupNow(stack.client, { dataSource: 'st1' }, 'auto', 'test');
  await first.result();
  expect((await describeProtection(stack.client, 'st1')).recentRuns.at(-1)?.workflowId).toBe(first.workflowId);
  expect(await until('OK from the CLI', async () => ((await cliLevel('st1')) === 'OK' ? true : undefined))).toBe(true);
  expect(await until('gauge 0', async () => ((await gauge('st1')) === 0 ? true : undefined))).toBe(true);

  // The next backup fails (the repository refuses its session): WARNING, with the reason.
  const repo = stack.server.repository;
  const begin = repo.beginSession.bind(repo);
  repo.beginSession = async () => {
    throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
  };
  refuseNext = 1; // and the receiver refuses the first delivery of that alert
  try {
    const failing = await startBackupNow(stack.client, { dataSource: 'st1' }, 'auto', 'test');
    await expect(failing.result()).rejects.toThrow();
  } finally {
    repo.beginSession = begin;
  }
  await until('the WARNING alert', async () => (received.length >= 1 ? true : undefined));
  const warning = JSON.parse((await hvp('status', '--protection', '--json')).stdout).find((r: { vm: string }) => r.vm === 'st1');
  expect(warning).toMatchObject({ level: 'WARNING', reason: expect.stringMatching(/the last backup failed: .*(space|ENOSPC)/), lastFailure: { workflowId: expect.stringMatching(/^backup\/st1\//) } });
  expect((await hvp('status', '--protection')).code).toBe(1);

  // Nothing more for twice the RPO since the good point: CRITICAL, by the workflow's own timer.
  await until('the CRITICAL alert', async () => (received.length >= 2 ? true : undefined), 220_000);
  expect(await until('CRITICAL from the CLI', async () => ((await cliLevel('st1')) === 'CRITICAL' ? true : undefined))).toBe(true);
  expect(await until('gauge 2', async () => ((await gauge('st1')) === 2 ? true : undefined))).toBe(true);

  // A good backup: OK again.
  await (await startBackupNow(stack.client, { dataSource: 'st1' }, 'auto', 'test')).result();
  await until('the OK alert', async () => (received.length >= 3 ? true : undefined));
  expect(await until('gauge 0 again', async () => ((await gauge('st1')) === 0 ? true : undefined))).toBe(true);
  const metrics = await (await fetch(stack.server.metricsUrl!)).text();
  expect(metrics).toMatch(new RegExp(`^hvprotect_last_recovery_point_timestamp_seconds\\{datasource="st1",group="",server="${stack.server.id}"\\} \\d+`, 'm'));
  expect(metrics).toMatch(new RegExp(`^hvprotect_rpo_seconds\\{datasource="st1",group="",server="${stack.server.id}"\\} 75$`, 'm'));
  // It answered the last refresh: its state's age is within one refresh interval, not growing.
  const age = new RegExp(`^hvprotect_protection_state_age_seconds\\{datasource="st1",group="",server="${stack.server.id}"\\} ([\\d.]+)$`, 'm').exec(metrics);
  expect(Number(age?.[1])).toBeLessThan(60);

  // Exactly one alert per change, each signed, in order, ids in sequence; none more after a while.
  await new Promise((r) => setTimeout(r, 3000));
  expect(received.map((r) => [r.id, r.alert.from, r.alert.to, r.valid])).toEqual([
    ['st1/1', 'OK', 'WARNING', true],
    ['st1/2', 'WARNING', 'CRITICAL', true],
    ['st1/3', 'CRITICAL', 'OK', true],
  ]);
  expect(received[0].alert).toMatchObject({ dataSource: 'st1', vm: 'st1', server: stack.server.id, status: { level: 'WARNING' } });
}, 480_000);

test('a schedule in Europe/Berlin: once a day at 02:30 local across both daylight-saving changes, catch-up as long as the gap, jitter bounded', async () => {
  const facts = await stack.lab.createVm({ name: 'tz1', host: 'hv01', disks: [{ sizeBytes: 1 * MiB, content: { kind: 'zeros' } }] });
  await protectVm(stack.client, { server: stack.server.id, vm: { vmId: facts.vmId, name: 'tz1', host: 'hv01', state: 'running' }, dataSource: 'tz1', schedule: { at: ['02:30'], timezone: 'Europe/Berlin' } });
  const handle = stack.client.schedule.getHandle('protect/tz1');
  const d = await handle.describe();
  expect(d.spec.timezone).toBe('Europe/Berlin');
  expect(Number(d.spec.jitter)).toBe(30 * 60_000);
  expect(Number(d.policies.catchupWindow)).toBe(24 * 3_600_000);
  expect((await describeProtection(stack.client, 'tz1')).spec).toBe('daily at 02:30 Europe/Berlin, started within 30 min');

  // Temporal's own next times around 28 March 2027 (02:30 does not exist) and 31 October 2027
  // (02:30 happens twice), without jitter so the instants are exact.
  const local = (iso: string) => new Intl.DateTimeFormat('sv-SE', { timeZone: 'Europe/Berlin', dateStyle: 'short', timeStyle: 'short' }).format(new Date(iso));
  for (const [from, to] of [['2027-03-25T00:00:00Z', '2027-03-31T00:00:00Z'], ['2027-10-28T00:00:00Z', '2027-11-03T00:00:00Z']]) {
    await handle.update((prev) => ({ ...prev, spec: { ...prev.spec, jitter: 0, startAt: new Date(from), endAt: new Date(to) } }));
    const times = (await handle.describe()).info.nextActionTimes.map((t) => t.toISOString());
    const days = times.map((t) => local(t).slice(0, 10));
    // One run per local day, none skipped, none doubled.
    expect(new Set(days).size).toBe(days.length);
    expect(days.length).toBe(6);
    for (const t of times) {
      const l = local(t);
      // 02:30 local, or on the spring-forward day the first instant after the gap (03:30 local).
      expect(l.slice(11) === '02:30' || (l.startsWith('2027-03-28') && l.slice(11) === '03:30')).toBe(true);
    }
  }
}, 120_000);

test('shadow storage past 90% of its limit: one signed alert, and one when back under 85%; none repeated', async () => {
  const repo = stack.server.repository;
  const [usage] = await repo.listShadowStorage('st1');
  expect(usage.usedBytes).toBeGreaterThan(0);
  const before = received.length;
  await repo.resizeShadowStorage('st1', { maxSize: { kind: 'bytes', bytes: Math.ceil(usage.usedBytes / 0.95) } });
  await until('the shadow storage alert', async () => (received.length > before ? true : undefined), 30_000);
  expect(received.slice(before).map((r) => [r.id, (r.alert as unknown as { state: string }).state, r.valid])).toEqual([['shadow/st1/1', 'over', true]]);
  expect((received[before].alert as unknown as { percent: number }).percent).toBeGreaterThan(90);
  await new Promise((r) => setTimeout(r, 2000));
  expect(received.length).toBe(before + 1);
  await repo.resizeShadowStorage('st1', { maxSize: { kind: 'unbounded' } });
  await repo.resizeShadowStorage('st1', { maxSize: { kind: 'bytes', bytes: usage.usedBytes * 2 } });
  await until('the back-under alert', async () => (received.length > before + 1 ? true : undefined), 30_000);
  expect(received.slice(before).map((r) => [r.id, (r.alert as unknown as { state: string }).state])).toEqual([['shadow/st1/1', 'over'], ['shadow/st1/2', 'back-under']]);
}, 120_000);

test('a new RPO is judged at once: shortened below the age of the protection, the CRITICAL alert comes without the old RPO waited out', async () => {
  const facts = await stack.lab.createVm({ name: 'st-rpo', host: 'hv01', disks: [{ sizeBytes: 2 * MiB, content: { kind: 'random', seed: 9, fill: 0.5 } }] });
  await protectVm(stack.client, { server: stack.server.id, vm: { vmId: facts.vmId, name: 'st-rpo', host: 'hv01', state: 'running' }, dataSource: 'st-rpo', schedule: { everyHours: 24 } });
  const ofIt = () => received.filter((r) => r.alert.dataSource === 'st-rpo');
  // 25 h to go before WARNING: nothing to say for now.
  await new Promise((r) => setTimeout(r, 2500));
  expect(ofIt()).toEqual([]);
  expect(await cliLevel('st-rpo')).toBe('OK');
  const st = await setProtectionPolicy(stack.client, 'st-rpo', { rpoMs: 1000 }, 'test');
  expect(st.rpoMs).toBe(1000);
  await until('the CRITICAL alert of st-rpo', async () => (ofIt().length ? true : undefined), 30_000);
  expect(ofIt().map((r) => [r.id, r.alert.from, r.alert.to, r.valid])).toEqual([['st-rpo/1', 'OK', 'CRITICAL', true]]);
  expect(await cliLevel('st-rpo')).toBe('CRITICAL');
  // Out of range: refused with the reason, nothing changed.
  await expect(setProtectionPolicy(stack.client, 'st-rpo', { rpoMs: 10 }, 'test')).rejects.toThrow(/an RPO of 10 ms: give at least a second/);
  expect((await describeProtection(stack.client, 'st-rpo')).unanswered).toBeUndefined();
}, 120_000);
