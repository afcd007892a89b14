// A protection that stops answering its server's state query keeps its last seen status on
// /metrics; hvprotect_protection_state_age_seconds says how old that is, so the
// HvprotectProtectionNotAnswering rule (deploy/prometheus) can say the status is stale.
import { ProtectionMetrics } from '../../metrics/metrics';
import type { ProtectionState } from '../../workflows/protection';

function state(dataSource: string): ProtectionState {
  return {
    dataSource, vm: dataSource, vmId: `id-${dataSource}`, server: 'dpm01',
    backup: { dataSource, vm: `id-${dataSource}` },
    chains: [{ server: 'dpm01', since: new Date(Date.now() - 3_600_000).toISOString() }],
    recent: [], skippedRuns: 0, rpoMs: 25 * 3_600_000,
  } as ProtectionState;
}

async function ages(m: ProtectionMetrics): Promise<Record<string, number>> {
  const text = await m.registry.metrics();
  const out: Record<string, number> = {};
  for (const [, ds, v] of text.matchAll(/^hvprotect_protection_state_age_seconds\{datasource="([^"]+)",group="",server="dpm01"\} ([\d.]+)$/gm)) out[ds] = Number(v);
  return out;
}

test('the age of each protection\'s last answer is exported beside its status, and grows while it does not answer', async () => {
  const m = new ProtectionMetrics();
  m.protectionStates.set('web01', { state: state('web01'), answeredAt: Date.now() - 2_000 });
  m.protectionStates.set('db02', { state: state('db02'), answeredAt: Date.now() - 900_000 });
  const a = await ages(m);
  expect(a.web01).toBeGreaterThanOrEqual(2);
  expect(a.web01).toBeLessThan(10);
  expect(a.db02).toBeGreaterThanOrEqual(900);
  expect(a.db02).toBeLessThan(910);
  // Its status is still there, as last seen: the age is what tells it is stale.
  expect(await m.registry.metrics()).toMatch(/^hvprotect_protection_status\{datasource="db02",group="",server="dpm01"\} 0$/m);
  await new Promise((r) => setTimeout(r, 1100));
  expect((await ages(m)).db02).toBeGreaterThanOrEqual(a.db02 + 1);
  // Gone from the server's protections: no series left behind.
  m.protectionStates.delete('db02');
  expect(Object.keys(await ages(m))).toEqual(['web01']);
});
