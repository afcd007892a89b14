// A recovery point's time comes from the protection server's clock (#18): the host's checkpoint
// time is kept only when it lies between the session's start and the commit. A host (or anyone
// who can start the activity) dating a point 9999-12-31 got every later backup of the data source
// refused and made `delete --oldest` take the good point; here it is dated now, and the planned
// backup, the retention and delete --oldest behave.
import { MockActivityEnvironment } from '@temporalio/testing';
import { createServerActivities } from '../../activities/server/backup';
import type { BackupPlan, CommitRequest, CommittedPoint } from '../../activities/server/types';
import { GrantAuthority, TokenStore } from '../../storage-api';
import { startFixture, type Fixture } from '../storage-api/support';

let f: Fixture;
beforeAll(async () => {
  f = await startFixture({ createChunkFolders: false, encoderThreads: 0 });
});
afterAll(() => f.close());

async function activities() {
  return createServerActivities({ repository: f.repo, tokens: await TokenStore.open(), grants: GrantAuthority.ephemeral(), self: { id: 'dpm01', storageUrl: f.api.url } });
}

function request(sessionId: string, workflowId: string, checkpointCreatedAt: string): CommitRequest {
  return {
    dataSource: 'vm-time', sessionId, workflowId, checkpointCreatedAt,
    vm: { vmId: 'v1', name: 'vm-time', host: 'hv01', config: {}, configPath: 'x' },
    mode: 'online', kind: 'initial-replica', modeReasons: [],
    disks: [{ diskId: 'disk0', readBy: 'hv01', kind: 'initial-replica', chunkCount: 0, bytesRead: 0, bytesSent: 0, changedChunks: 0, chunksSent: 0, durationMs: 1, virtualSize: 65536, chunkSize: 65536, changeTrackingId: 'rct-1', fileName: 'd.vhdx' }],
  } as unknown as CommitRequest;
}

async function commitWith(checkpointCreatedAt: (startedAt: string) => string, job: string) {
  const acts = await activities();
  const env = new MockActivityEnvironment();
  const plan: BackupPlan = await env.run(acts.planBackup, { dataSource: 'vm-time', vmId: 'v1', vmName: 'vm-time', disks: [{ diskId: 'disk0', virtualSize: 65536 }], requestedKind: 'auto' as const });
  await f.repo.putFullIndex(plan.sessionId, 'disk0', 65536, Buffer.alloc(32)); // what the agent sends: one all-zero slot
  const startedAt = (await f.repo.getSession(plan.sessionId)).startedAt;
  const before = Date.now();
  const point: CommittedPoint = await env.run(acts.commitRecoveryPoint, request(plan.sessionId, job, checkpointCreatedAt(startedAt)));
  return { point, startedAt, before, after: Date.now() };
}

test('a checkpoint dated 9999 (or 1970) makes a point dated now; a plausible checkpoint time is kept', async () => {
  const planted = await commitWith(() => '9999-12-31T00:00:00.000Z', 'wf-planted');
  expect(Date.parse(planted.point.createdAt)).toBeGreaterThanOrEqual(planted.before);
  expect(Date.parse(planted.point.createdAt)).toBeLessThanOrEqual(planted.after);
  const old = await commitWith(() => '1970-01-01T00:00:00.000Z', 'wf-old');
  expect(Date.parse(old.point.createdAt)).toBeGreaterThanOrEqual(old.before);
  // The checkpoint a host really took (after the session began, before the commit) keeps its time.
  const real = await commitWith((startedAt) => new Date(Date.parse(startedAt) + 1).toISOString(), 'wf-real');
  expect(real.point.createdAt).toBe(new Date(Date.parse(real.startedAt) + 1).toISOString());
  // The chain is in time order, and delete --oldest takes the oldest, not the good newest.
  const points = await f.repo.listPoints('vm-time');
  expect(points.map((p) => p.backup.workflowId)).toEqual(['wf-planted', 'wf-old', 'wf-real']);
  expect((await f.repo.deleteOldestPoint('vm-time')).pointId).toBe(planted.point.pointId);
});
