// One backup session per backup run: planBackup's session id follows from the workflow run, so a
// retried plan (a lost reply, a server restarted mid-step) gets the session its first attempt
// opened, not an orphan that holds back GC and counts as shadow storage for hours.
import { MockActivityEnvironment } from '@temporalio/testing';
import { createServerActivities } from '../../activities/server/backup';
import type { TokenStore } from '../../storage-api/tokens';
import { GrantAuthority } from '../../storage-api/grants';
import { sessionIdOf } from '../../repository';
import type { BackupPlan } from '../../activities/server/types';
import { tempRepo } from './support';

const req = { dataSource: 'web01', vmId: 'vm-1', vmName: 'web01', disks: [{ diskId: 'disk0', virtualSize: 1 << 20 }], requestedKind: 'auto' as const };

test('a retried planBackup of one run returns the same session; another run gets its own', async () => {
  const repository = await tempRepo();
  const server = createServerActivities({ repository, tokens: {} as TokenStore, grants: GrantAuthority.ephemeral(), self: { id: 'dpm01', storageUrl: 'http://127.0.0.1:1' } });
  const run = { workflowId: 'backup/web01/2026-11-30T08:00:00Z', runId: 'run-1' };
  const plan = (attempt: number, r = run): Promise<BackupPlan> => new MockActivityEnvironment({ workflowExecution: r, attempt }).run(server.planBackup, req);

  const first = await plan(1);
  const retried = await plan(2);
  expect(retried.sessionId).toBe(first.sessionId);
  expect(first.sessionId).toBe(sessionIdOf(run));
  expect((await repository.listSessions()).map((s) => s.sessionId)).toEqual([first.sessionId]);
  expect((await repository.getSession(first.sessionId)).owner).toEqual(run);

  const next = await plan(1, { ...run, runId: 'run-2' });
  expect(next.sessionId).not.toBe(first.sessionId);
  expect((await repository.listSessions()).length).toBe(2);
  await repository.close();
});
