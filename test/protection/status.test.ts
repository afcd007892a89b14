// protection/status.ts: the level of a protection from its record, at a given instant.
import { protectionStatus, lastGoodPoint } from '../../protection/status';
import type { JobOutcome } from '../../workflows/protection';

const H = 3_600_000;
const T0 = Date.parse('2026-11-01T02:00:00Z');
const at = (ms: number) => new Date(T0 + ms).toISOString();

function job(kind: JobOutcome['kind'], outcome: JobOutcome['outcome'], endMs: number, extra: Partial<JobOutcome> = {}): JobOutcome {
  return { workflowId: `${kind}/ds/${endMs}`, kind, by: 'schedule', server: 'dpm01', startedAt: at(endMs - 60_000), endedAt: at(endMs), outcome, ...extra };
}

const base = { dataSource: 'ds', chains: [{ server: 'dpm01', since: at(0) }], rpoMs: 25 * H };

test('before the first point: OK, then WARNING past the RPO, CRITICAL past twice it, counted from the start of protection', () => {
  expect(protectionStatus({ ...base, recent: [] }, new Date(T0 + H))).toMatchObject({ level: 'OK', reason: 'waiting for the first backup', worsensAt: at(25 * H) });
  expect(protectionStatus({ ...base, recent: [] }, new Date(T0 + 26 * H))).toMatchObject({ level: 'WARNING', worsensAt: at(50 * H) });
  expect(protectionStatus({ ...base, recent: [] }, new Date(T0 + 51 * H))).toMatchObject({ level: 'CRITICAL', reason: expect.stringMatching(/no recovery point yet, protected for 51 h/), worsensAt: undefined });
});

test('a good point resets the clock; a failed backup after it is WARNING with its reason, until a good one', () => {
  const good = job('backup', 'completed', 2 * H, { pointId: 'p1' });
  const failed = job('backup', 'failed', 26 * H, { error: 'the agent on hv01 did not answer' });
  expect(protectionStatus({ ...base, recent: [good] }, new Date(T0 + 20 * H))).toMatchObject({ level: 'OK', lastGood: { pointId: 'p1', at: at(2 * H), ageSeconds: 18 * 3600 } });
  const s = protectionStatus({ ...base, recent: [good, failed] }, new Date(T0 + 26.5 * H));
  expect(s).toMatchObject({ level: 'WARNING', reason: 'the last backup failed: the agent on hv01 did not answer', lastFailure: { workflowId: failed.workflowId }, worsensAt: at(52 * H) });
  expect(protectionStatus({ ...base, recent: [good, failed] }, new Date(T0 + 53 * H)).level).toBe('CRITICAL');
  // A later good point ends the warning; skipped and cancelled runs change nothing.
  const again = job('backup', 'completed', 27 * H, { pointId: 'p2' });
  expect(protectionStatus({ ...base, recent: [good, failed, again, job('backup', 'skipped', 28 * H), job('backup', 'cancelled', 29 * H)] }, new Date(T0 + 30 * H))).toMatchObject({ level: 'OK', lastFailure: undefined, lastGood: { pointId: 'p2' } });
});

test('restores are not backups; the kept last good point outlives the recent list', () => {
  const restore = job('restore', 'completed', 3 * H);
  expect(protectionStatus({ ...base, recent: [restore] }, new Date(T0 + 4 * H)).lastGood).toBeUndefined();
  // Twenty failed checks pushed the good backup out of `recent`: the record still has it.
  const failures = Array.from({ length: 20 }, (_, i) => job('check', 'failed', (10 + i) * H, { error: 'change tracking was lost: a consistency check is needed' }));
  const s = protectionStatus({ ...base, recent: failures, lastGood: { pointId: 'p0', at: at(9 * H) } }, new Date(T0 + 30 * H));
  expect(s).toMatchObject({ level: 'WARNING', checkNeeded: true, lastGood: { pointId: 'p0' } });
  expect(lastGoodPoint({ ...base, recent: [job('backup', 'completed', 12 * H, { pointId: 'p9' })], lastGood: { pointId: 'p0', at: at(9 * H) } })?.pointId).toBe('p9');
});
