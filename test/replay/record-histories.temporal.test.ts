// The recorder of the replay suite: runs the workflows for real (dev server, lab hosts, agents)
// and writes their histories to test/replay/histories/<scenario>.json, which replay.test.ts
// replays against the current workflow code. Left out of `npm test` (jest.config.js) unless asked for:
//
//   npm run -s build && HVP_RECORD_HISTORIES=all npx jest test/replay/record-histories
//   HVP_RECORD_HISTORIES=backup-express-full,restore-export npx jest test/replay/record-histories
//
// Record with the code that is running in the field (main before your change), never to make a
// failing replay pass: a history is a fact about a released version, not a fixture to refresh.
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { historyToJson } from './history-json';
import { startTestStack, waitForTransfer, type TestStack } from '../support/stack';
import type { BackupVmInput } from '../../workflows/backup-vm';
import { protectionStateQuery, protectionWorkflowId, type ProtectionState } from '../../workflows/protection';
import { setProtectionPolicy, startJob } from '../../client/protection';

const MiB = 1024 * 1024;
const HISTORIES = path.join(__dirname, 'histories');
const wanted = (process.env.HVP_RECORD_HISTORIES ?? '').split(',').map((s) => s.trim()).filter(Boolean);
const record = (name: string) => wanted.includes('all') || wanted.includes(name);
if (!wanted.length) throw new Error('name the histories to record: HVP_RECORD_HISTORIES=all (or scenario names, comma-separated)');
const suite = describe;

let stack: TestStack;
const TIMING = { heartbeatTimeout: '5 seconds', locateTimeout: '3 seconds', hostScheduleToStart: '20 seconds' };

/** Writes one run's history, named by scenario; the workflow id travels inside the file. */
async function save(client: Client, scenario: string, workflowId: string, runId?: string): Promise<void> {
  const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
  fs.mkdirSync(HISTORIES, { recursive: true });
  const json = historyToJson(history);
  fs.writeFileSync(path.join(HISTORIES, `${scenario}.json`), `${JSON.stringify({ scenario, workflowId, recordedAt: new Date().toISOString(), history: json }, null, 1)}\n`);
}

function startBackup(input: BackupVmInput): Promise<WorkflowHandle> {
  return stack.client.workflow.start('backupVm', {
    taskQueue: stack.server.taskQueue,
    workflowId: `backup/${input.dataSource}/${new Date().toISOString()}-${randomUUID().slice(0, 4)}`,
    args: [{ ...input, timing: TIMING }],
  });
}

async function backupRecorded(scenario: string, input: BackupVmInput): Promise<void> {
  const h = await startBackup(input);
  await h.result();
  if (record(scenario)) await save(stack.client, scenario, h.workflowId);
}

suite('record replay histories', () => {
  beforeAll(async () => {
    stack = await startTestStack({
      hosts: ['hv01', 'hv02', 'hv03'],
      cluster: { name: 'clu1', nodes: ['hv01', 'hv02'] },
      batchSlots: 4,
      throttleBytesPerSecond: 8 * MiB,
    });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  test('backups: initial replica (two disks), express full, consistency check, offline', async () => {
    const facts = await stack.lab.createVm({
      name: 'rec-web',
      host: 'hv01',
      disks: [
        { sizeBytes: 4 * MiB, content: { kind: 'random', seed: 1, fill: 0.5 } },
        { sizeBytes: 2 * MiB, content: { kind: 'random', seed: 2, fill: 0.5 } },
      ],
    });
    await backupRecorded('backup-initial-replica', { dataSource: 'rec-web', vm: facts.vmId });
    await stack.lab.writeDisk('rec-web', facts.disks[0].diskId, MiB, Buffer.alloc(MiB, 0x5a));
    await backupRecorded('backup-express-full', { dataSource: 'rec-web', vm: facts.vmId });
    await backupRecorded('backup-consistency-check', { dataSource: 'rec-web', vm: facts.vmId, kind: 'consistency-check' });
    // As the protection starts its backups: with the host the last one found the VM on.
    await backupRecorded('backup-located-by-hint', { dataSource: 'rec-web', vm: facts.vmId, lastHost: 'hv01' });
    const linux = await stack.lab.createVm({
      name: 'rec-linux',
      host: 'hv02',
      guestOs: 'Ubuntu 22.04',
      guestOsFamily: 'linux',
      volumes: [{ name: '/', fileSystem: 'ext4', dynamicDisk: false }],
      disks: [{ sizeBytes: 2 * MiB, content: { kind: 'random', seed: 3, fill: 0.5 } }],
    });
    await backupRecorded('backup-offline', { dataSource: 'rec-linux', vm: linux.vmId, policy: { offlineMethod: 'pause' } });
  });

  test('backups that follow a migration, inside and outside the cluster', async () => {
    const inside = await stack.lab.createVm({ name: 'rec-csv', host: 'hv01', storage: 'csv', disks: [{ sizeBytes: 32 * MiB, content: { kind: 'random', seed: 4, fill: 1 } }] });
    let h = await startBackup({ dataSource: 'rec-csv', vm: inside.vmId });
    await waitForTransfer(h, 2 * MiB);
    await stack.lab.migrateVm('rec-csv', 'hv02');
    await h.result();
    if (record('backup-migration-in-cluster')) await save(stack.client, 'backup-migration-in-cluster', h.workflowId);

    const outside = await stack.lab.createVm({ name: 'rec-roam', host: 'hv01', disks: [{ sizeBytes: 32 * MiB, content: { kind: 'random', seed: 5, fill: 1 } }] });
    await (await startBackup({ dataSource: 'rec-roam', vm: outside.vmId })).result();
    await stack.lab.writeDisk('rec-roam', outside.disks[0].diskId, 0, Buffer.alloc(24 * MiB, 0xab));
    h = await startBackup({ dataSource: 'rec-roam', vm: outside.vmId });
    await waitForTransfer(h, MiB);
    await stack.lab.migrateVm('rec-roam', 'hv03');
    await h.result();
    if (record('backup-migration-out-of-cluster')) await save(stack.client, 'backup-migration-out-of-cluster', h.workflowId);
  });

  test('a backup cancelled mid-transfer', async () => {
    const facts = await stack.lab.createVm({ name: 'rec-cancel', host: 'hv02', disks: [{ sizeBytes: 32 * MiB, content: { kind: 'random', seed: 6, fill: 1 } }] });
    const h = await startBackup({ dataSource: 'rec-cancel', vm: facts.vmId });
    await waitForTransfer(h, 2 * MiB);
    await h.cancel();
    await h.result().catch(() => undefined);
    for (const deadline = Date.now() + 20_000; (await stack.lab.inspectVm('rec-cancel')).checkpoints.length && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 200));
    if (record('backup-cancelled')) await save(stack.client, 'backup-cancelled', h.workflowId);
  });

  test('a restore (disks exported as raw)', async () => {
    const workflowId = `restore/rec-web/${randomUUID()}`;
    await stack.client.workflow.execute('restoreVm', {
      taskQueue: stack.server.taskQueue,
      workflowId,
      args: [{ dataSource: 'rec-web', target: { kind: 'export', host: 'hv02', dir: path.join(stack.dir, 'rec-export'), format: 'raw' } }],
    });
    if (record('restore-export')) await save(stack.client, 'restore-export', workflowId);
  });

  test('a protection: a job asked for, a scheduled run skipped and one run after a policy change, continue-as-new', async () => {
    const facts = await stack.lab.createVm({ name: 'rec-prot', host: 'hv01', disks: [{ sizeBytes: 16 * MiB, content: { kind: 'random', seed: 7, fill: 1 } }] });
    const ds = `rec-prot-${randomUUID().slice(0, 6)}`;
    const state: ProtectionState = {
      dataSource: ds,
      vm: facts.name,
      vmId: facts.vmId,
      server: stack.server.id,
      backup: { dataSource: ds, vm: facts.vmId, timing: TIMING },
      chains: [{ server: stack.server.id, since: new Date().toISOString() }],
      recent: [],
      skippedRuns: 0,
      // Continue as new after the first job, so the recording holds one.
      historyLimit: 10,
    };
    const prot = await stack.client.workflow.start('protection', { workflowId: protectionWorkflowId(ds), taskQueue: stack.server.taskQueue, args: [state] });
    const first = prot.firstExecutionRunId;
    // What the Schedule starts: scheduledBackup signals the protection.
    const scheduled = (n: number) =>
      stack.client.workflow.execute('scheduledBackup', { taskQueue: stack.server.taskQueue, workflowId: `scheduled/${ds}/${n}`, args: [{ dataSource: ds }] });
    const { handle } = await startJob(stack.client, ds, { kind: 'backup', by: 'recorder' });
    await scheduled(1); // skipped: the job runs
    await handle.result();
    const continued = async (runId: string) => {
      for (const deadline = Date.now() + 60_000; ; ) {
        const d = await stack.client.workflow.getHandle(prot.workflowId, runId).describe();
        if (d.status.name === 'CONTINUED_AS_NEW') return;
        if (Date.now() > deadline) throw new Error(`protection did not continue as new: ${d.status.name}, ${d.historyLength} events`);
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    await continued(first);
    const second = (await stack.client.workflow.getHandle(prot.workflowId).describe()).runId;
    // A policy change (`protect set`, `group set`) in the new run, before its backup.
    expect((await setProtectionPolicy(stack.client, ds, { rpoMs: 2 * 3_600_000, offlineMethod: 'pause' }, 'recorder')).rpoMs).toBe(2 * 3_600_000);
    await scheduled(2); // runs a backup in the new run
    for (const deadline = Date.now() + 60_000; ; ) {
      const now = await stack.client.workflow.getHandle(prot.workflowId).query(protectionStateQuery);
      if (now.recent.filter((r) => r.outcome === 'completed').length === 2 && !now.running) {
        expect(now.recent.map((r) => r.outcome)).toEqual(['skipped', 'completed', 'completed']);
        break;
      }
      if (Date.now() > deadline) throw new Error(`scheduled run did not finish: ${JSON.stringify(now.recent)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    await continued(second);
    if (record('protection-continue-as-new')) await save(stack.client, 'protection-continue-as-new', prot.workflowId, first);
    if (record('protection-scheduled-run')) await save(stack.client, 'protection-scheduled-run', prot.workflowId, second);
    if (record('scheduled-backup')) await save(stack.client, 'scheduled-backup', `scheduled/${ds}/2`);
    await stack.client.workflow.getHandle(prot.workflowId).terminate('recorded');
  });
});
