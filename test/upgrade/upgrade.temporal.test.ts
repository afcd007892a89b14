// Upgrading a protection server in place (README: Upgrading; temporal/versioning.ts), against the
// real dev server's worker deployments. Builds are named by the test ('build-a', 'build-b', …)
// in place of releases; the code is the same, which is what makes `adopt` safe here.
//
// 1. drain: a backup running on build-a finishes there; new work (a manual backup, a schedule's
//    run) does not start while drained; build-b starts, becomes current and runs what waited; the
//    protection follows it (AUTO_UPGRADE), the jobs stay pinned.
// 2. a build stopped with a backup open: the backup waits for it (nothing runs it with other
//    code), build-c names it at start, `upgrade adopt` continues it on build-c, and its point
//    restores bit for bit.
// 3. a server stopped over a scheduled time runs the missed backup when it returns.
import path from 'node:path';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { runCli, type CliResult } from '../support/cli';
import { startTestStack, restoredBytes, waitForTransfer, type TestStack } from '../support/stack';
import { initialDiskContent, type InitialContent } from '../../hypervisor/lab';
import { connectClient } from '../../temporal/connection';
import { startServer, type RunningServer } from '../../workers/server';
import { createLogger } from '../../log/logger';
import { describeProtection, protectVm, startBackupNow } from '../../client/protection';
import { protectionWorkflowId } from '../../workflows/protection';
import type { BackupVmResult } from '../../workflows/backup-vm';

const MiB = 1024 * 1024;
const DISK = 64 * MiB;

let stack: TestStack;
let client: Client;
let server: RunningServer;
const content: InitialContent = { kind: 'random', seed: 77, fill: 0.8 };
let diskId: string;

function hvp(...args: string[]): Promise<CliResult> {
  return runCli(stack, args, { timeoutMs: 150_000 });
}

/** The same server (id, state, storage port) started again as another build. */
async function restartAs(buildId: string): Promise<RunningServer> {
  const port = Number(new URL(server.storageApi.url).port);
  await server.shutdown();
  server = await startServer({
    id: server.id,
    buildId,
    logger: createLogger({ name: 'test', level: 'warn', format: 'json', destination: path.join(stack.dir, `server-${buildId}.jsonl`) }),
    temporal: stack.temporal,
    stateDir: server.stateDir,
    apiPort: port,
    metricsPort: 0,
    registerSearchAttributes: false,
  });
  stack.servers.push(server);
  return server;
}

async function versioningOf(h: WorkflowHandle): Promise<{ behavior?: string; buildId?: string }> {
  const info = (await h.describe()).raw.workflowExecutionInfo?.versioningInfo;
  const override = info?.versioningOverride?.pinned?.version?.buildId;
  return { behavior: temporal.api.enums.v1.VersioningBehavior[info?.behavior ?? 0], buildId: override || info?.deploymentVersion?.buildId || undefined };
}

async function backupsOf(ds: string): Promise<string[]> {
  const ids: string[] = [];
  for await (const wf of client.workflow.list({ query: `WorkflowType = 'backupVm' AND BackupDataSource = '${ds}'` })) ids.push(wf.workflowId);
  return ids.sort();
}

async function expectPointRestores(result: BackupVmResult): Promise<void> {
  expect((await restoredBytes({ ...stack, server }, 'up1', result.pointId, diskId)).equals(initialDiskContent(content, DISK))).toBe(true);
}

beforeAll(async () => {
  // Throttled so that a backup transfers for several seconds: long enough to drain or stop under it.
  stack = await startTestStack({ hosts: ['hv01'], buildId: 'build-a', throttleBytesPerSecond: 6_000_000, batchSlots: 8 });
  server = stack.server;
  client = await connectClient(stack.temporal);
  const facts = await stack.lab.createVm({ name: 'up1', host: 'hv01', disks: [{ sizeBytes: DISK, content }] });
  diskId = facts.disks[0].diskId;
  await protectVm(client, { server: server.id, vm: { vmId: facts.vmId, name: 'up1', host: 'hv01', state: 'running' }, dataSource: 'up1', schedule: { everyHours: 24 } });
}, 180_000);

afterAll(async () => {
  await client?.connection.close();
  await stack?.stop();
});

test('drain: the running backup finishes on its build, new work waits, the next build runs it', async () => {
  const first = await startBackupNow(client, { dataSource: 'up1' }, 'auto', 'test');
  await waitForTransfer(first, 1 * MiB);

  const drained = await hvp('upgrade', 'drain', '--server', server.id, '--wait', '120s');
  expect(drained.stdout).toMatch(new RegExp(`${server.id} is drained \\(build build-a runs no job\\)`));
  expect(drained.code).toBe(0);
  // Drained only once the backup had ended: it finished on the build that started it.
  expect((await first.describe()).status.name).toBe('COMPLETED');
  expect(await versioningOf(first)).toEqual({ behavior: expect.stringMatching(/PINNED/), buildId: 'build-a' });
  await expectPointRestores((await first.result()) as BackupVmResult);

  const status = JSON.parse((await hvp('upgrade', 'status', '--server', server.id, '--json')).stdout) as { drained: boolean; runningBuild: string };
  expect(status).toMatchObject({ drained: true, runningBuild: 'build-a' });
  // A manual backup is refused with what to do; the schedule's run is taken and waits.
  const manual = await hvp('backup', 'up1');
  expect(manual.code).not.toBe(0);
  expect(manual.stderr).toMatch(/drained for an upgrade.*nothing was started/);
  await client.schedule.getHandle('protect/up1').trigger();
  await new Promise((r) => setTimeout(r, 4000));
  expect(await backupsOf('up1')).toEqual([first.workflowId]);

  // The new build starts, becomes current, and what waited runs on it.
  await restartAs('build-b');
  let ids: string[] = [];
  for (const deadline = Date.now() + 60_000; Date.now() < deadline && ids.length < 2; ) {
    ids = await backupsOf('up1');
    await new Promise((r) => setTimeout(r, 500));
  }
  expect(ids).toHaveLength(2);
  const second = client.workflow.getHandle(ids.find((id) => id !== first.workflowId)!);
  await expectPointRestores((await second.result()) as BackupVmResult);
  expect(await versioningOf(second)).toEqual({ behavior: expect.stringMatching(/PINNED/), buildId: 'build-b' });
  expect(await versioningOf(client.workflow.getHandle(protectionWorkflowId('up1')))).toEqual({ behavior: expect.stringMatching(/AUTO_UPGRADE/), buildId: 'build-b' });
}, 240_000);

test('a build stopped under a backup: the backup waits for it, the next build names it, adopt finishes it there', async () => {
  // A consistency check reads the whole disk: a transfer long enough to stop the server under.
  const h = await startBackupNow(client, { dataSource: 'up1' }, 'consistency-check', 'test');
  await waitForTransfer(h, 1 * MiB);
  expect((await versioningOf(h)).buildId).toBe('build-b');
  await restartAs('build-c');

  // Its transfer (on the agent) ends; its workflow waits for build-b, which nothing runs.
  const status = JSON.parse((await hvp('upgrade', 'status', '--server', server.id, '--json')).stdout) as {
    currentBuild: string;
    pinned: Record<string, Array<{ workflowId: string }>>;
  };
  expect(status.currentBuild).toBe('build-c');
  expect(status.pinned['build-b']?.map((r) => r.workflowId)).toEqual([h.workflowId]);
  await new Promise((r) => setTimeout(r, 12_000));
  expect((await h.describe()).status.name).toBe('RUNNING');
  // The new build named it at start.
  const log = require('node:fs').readFileSync(path.join(stack.dir, 'server-build-c.jsonl'), 'utf8') as string;
  expect(log).toMatch(/job\(s\) started by build build-b wait for that build/);

  // doctor names it as a problem, with both ways out.
  const doctor = JSON.parse((await hvp('doctor', '--json', '--timeout', '10')).stdout) as { problems: string[] };
  expect(doctor.problems).toContainEqual(expect.stringMatching(new RegExp(`1 job\\(s\\) of ${server.id} wait for build build-b, which no running server has.*upgrade adopt --server ${server.id} --from build-b`)));

  const adopted = await hvp('upgrade', 'adopt', '--server', server.id, '--from', 'build-b');
  expect(adopted.stdout).toMatch(new RegExp(`1 job\\(s\\) of build build-b continue on build build-c: ${h.workflowId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  await expectPointRestores((await h.result()) as BackupVmResult);
  expect((await versioningOf(h)).buildId).toBe('build-c');
}, 240_000);

test('a server stopped over a scheduled time runs the missed backup when it returns', async () => {
  // A daily time one to two minutes ahead, in UTC, without jitter so the instant is exact.
  const at = new Date(Date.now() + 90_000);
  const hhmm = `${String(at.getUTCHours()).padStart(2, '0')}:${String(at.getUTCMinutes()).padStart(2, '0')}`;
  const facts = await stack.lab.createVm({ name: 'up2', host: 'hv01', disks: [{ sizeBytes: 4 * MiB, content: { kind: 'random', seed: 78, fill: 0.5 } }] });
  await protectVm(client, { server: server.id, vm: { vmId: facts.vmId, name: 'up2', host: 'hv01', state: 'running' }, dataSource: 'up2', schedule: { at: [hhmm], timezone: 'UTC' } });
  const schedule = client.schedule.getHandle('protect/up2');
  await schedule.update((prev) => ({ ...prev, spec: { ...prev.spec, jitter: 0 } }));
  const due = (await schedule.describe()).info.nextActionTimes[0];

  // The server is down over that time.
  const port = Number(new URL(server.storageApi.url).port);
  const { id, stateDir } = server;
  await server.shutdown();
  while (Date.now() < due.getTime() + 5_000) await new Promise((r) => setTimeout(r, 1000));
  expect(await backupsOf('up2')).toEqual([]);

  // It returns: the run the schedule took while it was away becomes the backup.
  server = await startServer({ id, buildId: 'build-c', logger: createLogger({ name: 'test', level: 'warn', format: 'json', destination: path.join(stack.dir, 'server-return.jsonl') }), temporal: stack.temporal, stateDir, apiPort: port, metricsPort: 0, registerSearchAttributes: false });
  stack.servers.push(server);
  let ids: string[] = [];
  for (const deadline = Date.now() + 90_000; Date.now() < deadline && !ids.length; await new Promise((r) => setTimeout(r, 500))) ids = await backupsOf('up2');
  expect(ids).toHaveLength(1);
  const result = (await client.workflow.getHandle(ids[0]).result()) as BackupVmResult;
  expect((await restoredBytes({ ...stack, server }, 'up2', result.pointId, facts.disks[0].diskId)).equals(initialDiskContent({ kind: 'random', seed: 78, fill: 0.5 }, 4 * MiB))).toBe(true);
  expect((await describeProtection(client, 'up2')).recentRuns.at(-1)?.workflowId).toBe(ids[0]);
}, 240_000);
