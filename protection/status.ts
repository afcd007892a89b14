// Protection status: "which VMs have no good recovery point within their RPO, and why", computed
// from the protection workflow's own durable record (its state: last good point, recent jobs),
// never from visibility, which lags under load. Pure (no I/O, no clock): the protection workflow
// runs it to decide when to alert, the server for its gauges, the CLI for `status --protection`.
//
//   OK        the last good point is within the RPO and the last backup did not fail
//   WARNING   the last backup failed, or the last good point is older than the RPO
//   CRITICAL  the last good point (or, before the first one, the start of protection) is older
//             than twice the RPO
import type { JobOutcome, ProtectionState } from '../workflows/protection';

export type StatusLevel = 'OK' | 'WARNING' | 'CRITICAL';

export const DEFAULT_RPO_MS = 24 * 3_600_000;

export interface ProtectionStatus {
  dataSource: string;
  level: StatusLevel;
  /** Why, in words an administrator acts on. */
  reason: string;
  rpoSeconds: number;
  lastGood?: { pointId: string; at: string; ageSeconds: number };
  lastFailure?: { at: string; error: string; workflowId: string };
  /** A failure that needs a consistency check (tracking lost, a quarantined chunk). */
  checkNeeded: boolean;
  /** When, without another job, the level gets worse (undefined when CRITICAL already). */
  worsensAt?: string;
}

type StatusInput = Pick<ProtectionState, 'dataSource' | 'recent' | 'chains'> & Partial<Pick<ProtectionState, 'lastGood' | 'rpoMs'>>;

const isBackup = (j: JobOutcome) => j.kind === 'backup' || j.kind === 'check';
const CHECK_NEEDED = /consistency check|change tracking (was )?(lost|reset)|quarantin/i;

/** The newest good point: the record kept across continue-as-new, else the recent jobs. */
export function lastGoodPoint(s: StatusInput): { pointId: string; at: string } | undefined {
  const fromRecent = [...s.recent].reverse().find((j) => isBackup(j) && j.outcome === 'completed' && j.pointId);
  const candidates = [s.lastGood, fromRecent && { pointId: fromRecent.pointId!, at: fromRecent.endedAt }].filter((x): x is { pointId: string; at: string } => !!x);
  return candidates.sort((a, b) => b.at.localeCompare(a.at))[0];
}

export function protectionStatus(s: StatusInput, now: Date): ProtectionStatus {
  const rpoMs = s.rpoMs ?? DEFAULT_RPO_MS;
  const good = lastGoodPoint(s);
  const lastBackup = [...s.recent].reverse().find((j) => isBackup(j) && j.outcome !== 'skipped' && j.outcome !== 'cancelled');
  const failed = lastBackup?.outcome === 'failed' && (!good || lastBackup.endedAt > good.at) ? lastBackup : undefined;
  const since = good?.at ?? s.chains[0]?.since ?? now.toISOString();
  const ageMs = Math.max(0, now.getTime() - Date.parse(since));
  const warnAt = Date.parse(since) + rpoMs;
  const critAt = Date.parse(since) + 2 * rpoMs;
  const age = describeAge(ageMs);
  let level: StatusLevel;
  let reason: string;
  if (ageMs > 2 * rpoMs) {
    level = 'CRITICAL';
    reason = good ? `no recovery point for ${age} (RPO ${describeAge(rpoMs)})` : `no recovery point yet, protected for ${age} (RPO ${describeAge(rpoMs)})`;
  } else if (ageMs > rpoMs) {
    level = 'WARNING';
    reason = good ? `last recovery point ${age} old, past the RPO of ${describeAge(rpoMs)}` : `no recovery point yet, protected for ${age}`;
  } else if (failed) {
    level = 'WARNING';
    reason = `the last backup failed: ${failed.error ?? 'no reason recorded'}`;
  } else {
    level = 'OK';
    reason = good ? `last recovery point ${age} old` : 'waiting for the first backup';
  }
  if (failed && !reason.startsWith('the last backup failed')) reason += `; the last backup failed: ${failed.error ?? 'no reason recorded'}`;
  return {
    dataSource: s.dataSource,
    level,
    reason,
    rpoSeconds: Math.round(rpoMs / 1000),
    lastGood: good && { ...good, ageSeconds: Math.round(ageMs / 1000) },
    lastFailure: failed && { at: failed.endedAt, error: failed.error ?? '', workflowId: failed.workflowId },
    checkNeeded: !!failed && CHECK_NEEDED.test(failed.error ?? ''),
    worsensAt: level === 'CRITICAL' ? undefined : new Date(level === 'WARNING' ? critAt : warnAt).toISOString(),
  };
}

function describeAge(ms: number): string {
  const min = Math.round(ms / 60_000);
  if (min < 120) return `${min} min`;
  const h = ms / 3_600_000;
  return h < 72 ? `${Math.round(h)} h` : `${Math.round(h / 24)} days`;
}
