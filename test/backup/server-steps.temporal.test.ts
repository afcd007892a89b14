// The server's steps of a long backup: its session lives as long as its workflow run (checked
// against Temporal, not a fixed TTL a long backup outlives), a session whose run ended is
// aborted, and a retention that fails after the commit leaves a completed backup with a warning.
import { SA } from '../../temporal/search-attribute-keys';
import fs from 'node:fs';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { sessionIdOf } from '../../repository';
import { startTestStack, startBackup as sharedStartBackup, restoredBytes, type TestStack } from '../support/stack';
import { initialDiskContent } from '../../hypervisor/lab';
import type { HypervisorAdapter } from '../../hypervisor/types';
import type { BackupVmInput, BackupVmResult } from '../../workflows/backup-vm';

const MiB = 1024 * 1024;
/** A session lapses after 3 s without a call: a checkpoint taking 8 s outlives it twice over. */
const TTL_MS = 3000;
let stack: TestStack;
const slow = { checkpointMs: 0 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function slowCheckpoint(_host: string, a: HypervisorAdapter): HypervisorAdapter {
  return new Proxy(a, {
    get(target, prop, receiver) {
      if (prop === 'createBackupCheckpoint') {
        return async (vmId: string, opts: Parameters<HypervisorAdapter['createBackupCheckpoint']>[1]) => {
          await sleep(slow.checkpointMs);
          return target.createBackupCheckpoint(vmId, opts);
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

beforeAll(async () => {
  stack = await startTestStack({ hosts: ['hv01'], sessions: { ttlMs: TTL_MS, keepIntervalMs: 500 }, wrapAdapter: slowCheckpoint });
});
afterAll(async () => {
  await stack?.stop();
});

const startBackup = (input: BackupVmInput): Promise<WorkflowHandle> => sharedStartBackup(stack, input, { heartbeatTimeout: '5 seconds', locateTimeout: '3 seconds' });

test('a backup that spends longer than the session TTL between plan and transfer commits: the keeper renews its session', async () => {
  slow.checkpointMs = 8000;
  const content = { kind: 'random' as const, seed: 91, fill: 1 };
  const facts = await stack.lab.createVm({ name: 'slowpoke', host: 'hv01', disks: [{ sizeBytes: 2 * MiB, content }] });
  const r = (await (await startBackup({ dataSource: 'slowpoke', vm: facts.vmId })).result()) as BackupVmResult;
  expect((await restoredBytes(stack, 'slowpoke', r.pointId, facts.disks[0].diskId)).equals(initialDiskContent(content, 2 * MiB))).toBe(true);
  expect(await stack.server.repository.listSessions()).toEqual([]);
});

test('the session of a run that ended without its cleanup (terminated) is aborted by the keeper', async () => {
  slow.checkpointMs = 4000;
  const facts = await stack.lab.createVm({ name: 'dropped', host: 'hv01', disks: [{ sizeBytes: 2 * MiB, content: { kind: 'random', seed: 92, fill: 1 } }] });
  const handle = await startBackup({ dataSource: 'dropped', vm: facts.vmId });
  const runId = (await handle.describe()).runId;
  const ours = async () => (await stack.server.repository.listSessions()).filter((s) => s.owner?.workflowId === handle.workflowId && s.owner.runId === runId);
  for (const deadline = Date.now() + 20_000; (await ours()).length === 0; await sleep(100)) if (Date.now() > deadline) throw new Error('no session opened');
  await handle.terminate('test: a run that never cleans up');
  // Removed, not merely lapsed: its folder goes (an expired session stays on disk until GC or a restart).
  const folder = path.join(stack.server.repository.root, 'sessions', sessionIdOf({ workflowId: handle.workflowId, runId }));
  for (const deadline = Date.now() + 5000; fs.existsSync(folder); await sleep(100)) if (Date.now() > deadline) throw new Error('orphaned session still there');
  expect(await ours()).toEqual([]);
  await sleep(slow.checkpointMs); // let the agent's checkpoint call end before the next test
});

test('a retention that fails after the commit: the backup completes with the point and a warning, never FAILED', async () => {
  slow.checkpointMs = 0;
  const facts = await stack.lab.createVm({ name: 'keeper', host: 'hv01', disks: [{ sizeBytes: 2 * MiB, content: { kind: 'random', seed: 93, fill: 1 } }] });
  const repo = stack.server.repository;
  const enforce = repo.enforceRetention.bind(repo);
  repo.enforceRetention = async () => {
    throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
  };
  let r: BackupVmResult;
  let handle: WorkflowHandle;
  try {
    handle = await startBackup({ dataSource: 'keeper', vm: facts.vmId });
    r = (await handle.result()) as BackupVmResult;
  } finally {
    repo.enforceRetention = enforce;
  }
  expect((await handle.describe()).status.name).toBe('COMPLETED');
  // Recorded where an administrator filters: the Web UI's search attribute.
  expect((await handle.describe()).typedSearchAttributes.get(SA.warning)).toBe('retention-not-applied');
  expect(r.retentionWarning).toMatch(/not applied.*ENOSPC|full/);
  expect((await repo.listPoints('keeper')).map((p) => p.pointId)).toEqual([r.pointId]);
  expect((await stack.lab.inspectVm('keeper')).checkpoints).toEqual([]);
  const metrics = await (await fetch(stack.server.metricsUrl!)).text();
  expect(metrics).toMatch(/hvprotect_retention_failures_total\{datasource="keeper"\} [1-9]/);
});

test('a plan refused while the online checkpoint is being made (the two overlap): the checkpoint is released, no session and no point remain', async () => {
  slow.checkpointMs = 3000;
  const facts = await stack.lab.createVm({ name: 'refused', host: 'hv01', disks: [{ sizeBytes: 2 * MiB, content: { kind: 'random', seed: 94, fill: 1 } }] });
  const repo = stack.server.repository;
  const begin = repo.beginSession.bind(repo);
  let checkpointsDuringPlan: number | undefined;
  repo.beginSession = async (...args: Parameters<typeof begin>) => {
    await sleep(1000); // the checkpoint is under way by now
    checkpointsDuringPlan = (await stack.lab.inspectVm('refused')).checkpoints.length;
    await begin(...args); // a session opened, then the volume fills: the plan fails after it
    throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
  };
  let handle: WorkflowHandle;
  try {
    handle = await startBackup({ dataSource: 'refused', vm: facts.vmId });
    await expect(handle.result()).rejects.toThrow();
  } finally {
    repo.beginSession = begin;
  }
  const history = JSON.stringify((await handle.fetchHistory()).events);
  expect(history).toMatch(/repository volume is full/);
  // The plan ran while the checkpoint was being made, and what the checkpoint made is gone again.
  expect(history).toMatch(/createBackupCheckpoint/);
  expect(checkpointsDuringPlan).toBeDefined();
  expect((await stack.lab.inspectVm('refused')).checkpoints).toEqual([]);
  // The session the failed plan had opened goes with its run (the keeper aborts it).
  for (const deadline = Date.now() + 10_000; (await repo.listSessions()).some((s) => s.dataSource === 'refused'); await sleep(100)) {
    if (Date.now() > deadline) throw new Error('the refused plan\'s session is still there');
  }
  expect(await repo.listPoints('refused').catch(() => [])).toEqual([]);
});
