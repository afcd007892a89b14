// A recovery point's time comes from the protection server's clock (#18): the host's checkpoint
// time is kept only when it lies between the session's start and the commit. A host (or anyone
// who can start the activity) dating a point 9999-12-31 got every later backup of the data source
// refused and made `delete --oldest` take the good point; here it is dated now, and the planned
// backup, the retention and delete --oldest behave.
import { randomUUID } from 'node:crypto';
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

async function activities(maxPointsPerHour?: number) {
  return createServerActivities({ repository: f.repo, tokens: await TokenStore.open(), grants: GrantAuthority.ephemeral(), self: { id: 'dpm01', storageUrl: f.api.url }, maxPointsPerHour });
}

function request(sessionId: string, workflowId: string, checkpointCreatedAt: string, dataSource = 'vm-time'): CommitRequest {
  return {
    dataSource, sessionId, workflowId, checkpointCreatedAt,
    vm: { vmId: 'v1', name: 'vm-time', host: 'hv01', config: {}, configPath: 'x' },
    mode: 'online', kind: 'initial-replica', modeReasons: [],
    disks: [{ diskId: 'disk0', readBy: 'hv01', kind: 'initial-replica', chunkCount: 0, bytesRead: 0, bytesSent: 0, changedChunks: 0, chunksSent: 0, durationMs: 1, virtualSize: 65536, chunkSize: 65536, changeTrackingId: 'rct-1', fileName: 'd.vhdx' }],
  } as unknown as CommitRequest;
}

/** An activity environment as one backup run sees it (planBackup's session follows from the run). */
const runEnv = (workflowId: string) => new MockActivityEnvironment({ workflowExecution: { workflowId, runId: randomUUID() } });

async function commitWith(checkpointCreatedAt: (startedAt: string) => string, job: string) {
  const acts = await activities();
  const env = runEnv(job);
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

test('points per data source per hour are bounded: past the limit planning and committing are refused, saying why', async () => {
  const acts = await activities(2);
  const env = runEnv('wf-rate');
  let runs = 0;
  const plan = (): Promise<BackupPlan> => runEnv(`wf-rate-${runs++}`).run(acts.planBackup, { dataSource: 'vm-rate', vmId: 'v2', vmName: 'vm-rate', disks: [{ diskId: 'disk0', virtualSize: 65536 }], requestedKind: 'auto' as const });
  const plans: BackupPlan[] = [];
  for (let i = 0; i < 3; i++) plans.push(await plan()); // three backups planned while none has committed
  for (const [i, p] of plans.entries()) await f.repo.putFullIndex(p.sessionId, 'disk0', 65536, Buffer.alloc(32));
  const commit = (p: BackupPlan, i: number): Promise<CommittedPoint> => env.run(acts.commitRecoveryPoint, request(p.sessionId, `wf-rate-${i}`, new Date().toISOString(), 'vm-rate'));
  await commit(plans[0], 0);
  await commit(plans[1], 1);
  await expect(commit(plans[2], 2)).rejects.toMatchObject({ type: 'TooManyPoints', nonRetryable: true, message: expect.stringMatching(/vm-rate already has 2 recovery points from the last hour.*--max-points-per-hour 2/) });
  await expect(plan()).rejects.toMatchObject({ type: 'TooManyPoints' });
  expect(await f.repo.listPoints('vm-rate')).toHaveLength(2);
  // A retried commit of a point that exists is its answer, not a refusal.
  expect((await commit(plans[1], 1)).pointId).toBe((await f.repo.listPoints('vm-rate'))[1].pointId);
});
