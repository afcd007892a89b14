// Retention as Proxmox Backup Server's prune and restic's PlanPrune have it: a pure plan of which
// points to delete, from the points, the settings, what is pinned and the bytes coming in; then
// a step that deletes. Rules, in order:
//   fit     a commit (incoming > 0) whose point cannot fit even with every deletable point gone
//           is refused before anything is deleted
//   count   at most maxPoints (counting the incoming point)
//   age     points older than the retention range
//   size    oldest first until used + incoming fit the maximum
// Deletable = not the newest, not pinned (a restore lease, a read in progress, a session's base);
// always oldest first.
//
// The count rule cannot be used to wipe history: it never leaves fewer than
// K = min(KEEP_BEFORE_FLOOD, maxPoints - 1) points made before the last FLOOD_WINDOW_MS (an hour).
// A burst of backups (a misconfigured schedule, or someone who can start them) then evicts points
// of the burst itself, oldest first, and the data source keeps its real recovery points from
// before the burst; meanwhile the count may exceed maxPoints by the points of the last hour
// (bounded by the server's points-per-hour limit). Without a burst (one point an hour or fewer) the
// rule changes nothing. Age and size rules are the administrator's and apply as set.
import { RepositoryError } from './errors';
import { parsePointId } from './ids';
import type { DeletionReason, PointDeletion } from './points';

/** The count rule keeps the newest this many points made before the last FLOOD_WINDOW_MS. */
export const KEEP_BEFORE_FLOOD = 3;
export const FLOOD_WINDOW_MS = 60 * 60_000;

export interface RetentionInput {
  dataSource: string;
  /** Committed points, oldest first. */
  points: ReadonlyArray<{ pointId: string; ownedBytes: number }>;
  pinned: ReadonlySet<string>;
  maxPoints: number;
  retentionRangeDays?: number;
  /** The shadow storage maximum in bytes; Infinity when unbounded. */
  maxBytes: number;
  /** Bytes of a point being committed (0 outside a commit). */
  incomingBytes: number;
  /** The reason recorded for size deletions outside a commit. */
  sizeReason: DeletionReason;
  now: number;
}

export interface RetentionPlan {
  deletions: Array<{ pointId: string; reason: DeletionReason }>;
  /** Set when the incoming point cannot fit: the deletions before it still happen. */
  refused?: RepositoryError;
}

export function planRetention(input: RetentionInput): RetentionPlan {
  const { dataSource: ds, maxBytes: max, incomingBytes: incoming } = input;
  const remaining = [...input.points];
  const newest = remaining[remaining.length - 1]?.pointId;
  const deletable = () => remaining.filter((p) => p.pointId !== newest && !input.pinned.has(p.pointId));
  const deletions: RetentionPlan['deletions'] = [];
  const remove = (pointId: string, reason: DeletionReason) => {
    remaining.splice(remaining.findIndex((p) => p.pointId === pointId), 1);
    deletions.push({ pointId, reason });
  };
  const used = () => remaining.reduce((a, p) => a + p.ownedBytes, 0);

  if (incoming > 0 && Number.isFinite(max)) {
    const candidates = new Set(deletable().map((p) => p.pointId));
    const pinnedBytes = remaining.filter((p) => !candidates.has(p.pointId)).reduce((a, p) => a + p.ownedBytes, 0);
    if (pinnedBytes + incoming > max) {
      return {
        deletions: [],
        refused: new RepositoryError(
          'SHADOW_STORAGE_FULL',
          `recovery point of ${ds} needs ${incoming} bytes; shadow storage maximum is ${max} bytes and ${pinnedBytes} bytes are held by points that cannot be deleted (the newest, or in use)`,
          `raise the limit (hvprotect shadowstorage resize --for ${ds} --maxsize <bigger|UNBOUNDED>) or wait for restores to finish`,
          { neededBytes: incoming, maximumBytes: max, pinnedBytes },
        ),
      };
    }
  }
  const extra = incoming > 0 ? 1 : 0;
  const keep = Math.min(KEEP_BEFORE_FLOOD, input.maxPoints - 1);
  const beforeFlood = (p: { pointId: string }) => parsePointId(p.pointId).getTime() < input.now - FLOOD_WINDOW_MS;
  while (remaining.length + extra > input.maxPoints) {
    const olderLeft = remaining.filter(beforeFlood).length;
    const c = deletable().find((p) => !beforeFlood(p) || olderLeft - 1 >= keep);
    if (!c) break;
    remove(c.pointId, 'max-points');
  }
  if (input.retentionRangeDays !== undefined) {
    const cutoff = input.now - input.retentionRangeDays * 86_400_000;
    for (const p of deletable()) {
      if (parsePointId(p.pointId).getTime() >= cutoff) break;
      remove(p.pointId, 'retention-range');
    }
  }
  if (Number.isFinite(max)) {
    while (used() + incoming > max) {
      const c = deletable()[0];
      if (!c) {
        if (incoming > 0) {
          const refused = new RepositoryError(
            'SHADOW_STORAGE_FULL',
            `recovery point of ${ds} (${incoming} bytes) does not fit in shadow storage of ${max} bytes (${used()} used after deleting ${deletions.length} points)`,
            `raise the limit (hvprotect shadowstorage resize --for ${ds} --maxsize <bigger|UNBOUNDED>)`,
          );
          return { deletions, refused };
        }
        break;
      }
      remove(c.pointId, incoming > 0 ? 'shadow-storage-full' : input.sizeReason);
    }
  }
  return { deletions };
}

/**
 * Carries plans out until one asks for nothing. A deletion can free fewer bytes than the point
 * owned (the next point inherits the chunks it shares), so the plan is made again after each
 * round from a fresh look at the points.
 */
export async function applyRetention(look: () => Promise<RetentionInput>, remove: (pointId: string, reason: DeletionReason) => Promise<PointDeletion>): Promise<PointDeletion[]> {
  const deleted: PointDeletion[] = [];
  for (;;) {
    const plan = planRetention(await look());
    for (const d of plan.deletions) deleted.push(await remove(d.pointId, d.reason));
    if (plan.refused) throw plan.refused;
    if (plan.deletions.length === 0) return deleted;
  }
}
