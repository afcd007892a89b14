// Retention decides apart from deleting (retention.ts): the plan is read here as data, and a
// manifest written before the typed sections (hvprotect-point/1) still opens in today's shape.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { planRetention, RepositoryError } from '../../repository';
import type { RetentionInput } from '../../repository';
import { backup, randomDisk, tempRepo } from './support';

const DAY = 86_400_000;
const NOW = Date.parse('2026-11-30T12:00:00Z');
const id = (daysAgo: number) => new Date(NOW - daysAgo * DAY).toISOString().replace(/[-:]/g, '');

function input(over: Partial<RetentionInput>): RetentionInput {
  return {
    dataSource: 'ds', points: [], pinned: new Set(), maxPoints: 64, maxBytes: Infinity, incomingBytes: 0, sizeReason: 'retention-range', now: NOW, ...over,
  };
}

describe('planRetention', () => {
  const points = [10, 8, 6, 4, 2, 0].map((d) => ({ pointId: id(d), ownedBytes: 100 }));

  it('deletes oldest first past the count, never the newest, skipping pinned points', () => {
    const plan = planRetention(input({ points, maxPoints: 3, pinned: new Set([id(10)]) }));
    expect(plan.deletions).toEqual([
      { pointId: id(8), reason: 'max-points' },
      { pointId: id(6), reason: 'max-points' },
      { pointId: id(4), reason: 'max-points' },
    ]);
    expect(plan.refused).toBeUndefined();
  });

  it('a burst of points in the last hour evicts its own points, never the points from before it (#18)', () => {
    const stamp = (msAgo: number) => new Date(NOW - msAgo).toISOString().replace(/[-:]/g, '');
    const before = [3, 2, 1].map((d) => ({ pointId: id(d), ownedBytes: 100 }));
    const burst = Array.from({ length: 64 }, (_, i) => ({ pointId: stamp((64 - i) * 30_000), ownedBytes: 0 }));
    const plan = planRetention(input({ points: [...before, ...burst], maxPoints: 64, incomingBytes: 1 }));
    // 3 + 64 + the incoming = 68: four go, the four oldest of the burst.
    expect(plan.deletions).toEqual(burst.slice(0, 4).map((p) => ({ pointId: p.pointId, reason: 'max-points' })));
    // The audit's attack: the only real point and 64 no-change commits — the real point stays.
    const only = planRetention(input({ points: [before[2], ...burst], maxPoints: 64, incomingBytes: 1 }));
    expect(only.deletions.map((d) => d.pointId)).not.toContain(before[2].pointId);
    expect(only.deletions).toHaveLength(2);
    // Without a burst the count rule is as before: oldest first down to maxPoints.
    const calm = planRetention(input({ points: [10, 8, 6, 4, 2].map((d) => ({ pointId: id(d), ownedBytes: 1 })), maxPoints: 2 }));
    expect(calm.deletions.map((d) => d.pointId)).toEqual([id(10), id(8), id(6)]);
  });

  it('counts the incoming point and deletes past the retention range', () => {
    const plan = planRetention(input({ points, maxPoints: 6, incomingBytes: 1, retentionRangeDays: 5 }));
    expect(plan.deletions).toEqual([
      { pointId: id(10), reason: 'max-points' },
      { pointId: id(8), reason: 'retention-range' },
      { pointId: id(6), reason: 'retention-range' },
    ]);
  });

  it('frees room for an incoming point by size, oldest first', () => {
    const plan = planRetention(input({ points, maxBytes: 450, incomingBytes: 50 }));
    expect(plan.deletions).toEqual([{ pointId: id(10), reason: 'shadow-storage-full' }, { pointId: id(8), reason: 'shadow-storage-full' }]);
  });

  it('refuses a point that cannot fit and plans no deletion for it', () => {
    const plan = planRetention(input({ points, maxBytes: 450, incomingBytes: 50, pinned: new Set(points.slice(0, 5).map((p) => p.pointId)) }));
    expect(plan.deletions).toEqual([]);
    expect(plan.refused).toBeInstanceOf(RepositoryError);
    expect(plan.refused?.code).toBe('SHADOW_STORAGE_FULL');
    expect(plan.refused?.details).toEqual({ neededBytes: 50, maximumBytes: 450, pinnedBytes: 600 });
  });

  it('outside a commit, a size overrun deletes what it can and is not an error', () => {
    const plan = planRetention(input({ points, maxBytes: 150, sizeReason: 'shadow-storage-resize' }));
    expect(plan.deletions.map((d) => d.reason)).toEqual(Array(5).fill('shadow-storage-resize'));
    expect(plan.refused).toBeUndefined();
  });
});

describe('manifest format', () => {
  it('opens a hvprotect-point/1 manifest with its free-form vm split into backup, vm and annotations', async () => {
    const repo = await tempRepo();
    try {
      const p = await backup(repo, 'legacy', randomDisk(256 * 1024, 3));
      const file = path.join(path.dirname(repo.indexPath('legacy', p.pointId, 'disk0')), 'manifest.json');
      const { backup: _b, annotations: _a, ...rest } = p;
      const legacy = {
        ...rest,
        format: 'hvprotect-point/1',
        vm: { name: 'web01', host: 'hv01', config: { memoryMB: 2048 }, workflowId: 'backup/legacy/1', changeTracking: { disk0: 'rct-7' }, modeReasons: ['VSS'], transfer: [], guestWriteSeq: 12 },
      };
      await fs.writeFile(file, JSON.stringify(legacy));
      const read = await repo.getPoint('legacy', p.pointId);
      expect(read.format).toBe('hvprotect-point/2');
      expect(read.backup).toEqual({ workflowId: 'backup/legacy/1', changeTracking: { disk0: 'rct-7' }, modeReasons: ['VSS'], transfer: [] });
      expect(read.vm).toEqual({ name: 'web01', host: 'hv01', config: { memoryMB: 2048 } });
      expect(read.annotations).toEqual({ guestWriteSeq: 12 });
    } finally {
      await repo.close();
    }
  });

  it('refuses a commit whose backup record is malformed, naming the field', async () => {
    const repo = await tempRepo();
    try {
      const s = await repo.beginSession('bad');
      const bad = { changeTracking: { disk0: 5 }, modeReasons: [], transfer: [] } as unknown as Parameters<typeof repo.commitPoint>[1]['backup'];
      await expect(repo.commitPoint(s.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'd.vhdx', virtualSize: 65536 }], backup: bad }))
        .rejects.toThrow(/backup.changeTracking/);
    } finally {
      await repo.close();
    }
  });
});
