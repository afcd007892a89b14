// Faults that are not crashes: a chunk corrupted in the repository (verify finds it, the next
// consistency check repairs it from the source), a damaged VHDX on the host, a VM deleted
// mid-backup, a storage API that drops connections mid-upload, and a host that stops answering
// (the backup follows the VM, or fails in bounded time).
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { failureOf, startTestStack, restoredBytes as sharedRestoredBytes, startBackup as sharedStartBackup, waitForTransfer, type TestStack } from '../support/stack';
import { initialDiskContent } from '../../hypervisor/lab';
import { verifyRepository } from '../../repository';
import type { BackupVmInput, BackupVmResult } from '../../workflows/backup-vm';

const MiB = 1024 * 1024;
let stack: TestStack;

beforeAll(async () => {
  stack = await startTestStack({
    hosts: ['hv01', 'hv02', 'hv03'],
    cluster: { name: 'clu9', nodes: ['hv01', 'hv02'] },
    batchSlots: 4,
    throttleBytesPerSecond: 12 * MiB,
  });
});
afterAll(async () => {
  await stack?.stop();
});

const start = (input: BackupVmInput): Promise<WorkflowHandle> => sharedStartBackup(stack, input, { heartbeatTimeout: '3 seconds', locateTimeout: '3 seconds', hostScheduleToStart: '5 seconds', transferScheduleToStart: '5 seconds' });

const restored = (ds: string, pointId: string, diskId: string) => sharedRestoredBytes(stack, ds, pointId, diskId);


async function noLeftovers(vm: string): Promise<void> {
  const f = await stack.lab.inspectVm(vm);
  expect(f.checkpoints).toEqual([]);
  expect(f.state).toBe('running');
}

test('a chunk corrupted after commit: verify finds it, the next consistency check repairs it', async () => {
  const content = { kind: 'random' as const, seed: 71, fill: 1 };
  const facts = await stack.lab.createVm({ name: 'rot', host: 'hv03', disks: [{ sizeBytes: 8 * MiB, content }] });
  const diskId = facts.disks[0].diskId;
  const first = (await (await start({ dataSource: 'rot', vm: facts.vmId })).result()) as BackupVmResult;
  // Flip bytes in the middle of one chunk file of the point.
  const repo = stack.server.repository;
  const index = fs.readFileSync(repo.indexPath('rot', first.pointId, diskId));
  const digest = index.subarray(index.length - 32 * 16, index.length - 32 * 15).toString('hex');
  const file = repo.chunks.pathOf(digest);
  const bytes = fs.readFileSync(file);
  bytes[bytes.length - 10] ^= 0xff;
  fs.writeFileSync(file, bytes);

  const report = await verifyRepository(repo, { readData: true, quarantine: true });
  expect(report.ok).toBe(false);
  expect(report.damagedChunks.map((d) => d.digest)).toEqual([digest]);
  expect(report.affectedPoints.map((p) => `${p.dataSource}/${p.pointId}`)).toEqual([`rot/${first.pointId}`]);
  expect(report.quarantined).toBe(1);

  const check = (await (await start({ dataSource: 'rot', vm: facts.vmId, kind: 'consistency-check' })).result()) as BackupVmResult;
  expect(check.kind).toBe('consistency-check');
  expect(check.disks[0].bytesSent).toBeGreaterThan(0);
  expect((await verifyRepository(repo, { readData: true })).ok).toBe(true);
  // Both points read right again: the old one shared the repaired chunk.
  const want = initialDiskContent(content, 8 * MiB);
  expect((await restored('rot', first.pointId, diskId)).equals(want)).toBe(true);
  expect((await restored('rot', check.pointId, diskId)).equals(want)).toBe(true);
});

test('a damaged VHDX on the host: a clear failure naming the disk, and nothing left behind', async () => {
  const facts = await stack.lab.createVm({ name: 'broken', host: 'hv03', disks: [{ sizeBytes: 8 * MiB, content: { kind: 'random', seed: 72, fill: 1 } }] });
  const file = facts.disks[0].path;
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(128 * 1024, 0x5a), 0, 128 * 1024, 64 * 1024); // both VHDX headers
  fs.closeSync(fd);
  const { text: why } = await failureOf((await start({ dataSource: 'broken', vm: facts.vmId })).result());
  expect(why).toMatch(/broken|scsi0-0|\.vhdx/);
  expect(why).toMatch(/header|VHDX|checksum|damaged/i);
  expect((await stack.lab.inspectVm('broken')).checkpoints).toEqual([]);
  expect(await stack.server.repository.listPoints('broken')).toEqual([]);
});

test('a VM deleted mid-backup: a clear failure and the cleanup done', async () => {
  const facts = await stack.lab.createVm({ name: 'doomed', host: 'hv03', disks: [{ sizeBytes: 24 * MiB, content: { kind: 'random', seed: 73, fill: 1 } }] });
  const handle = await start({ dataSource: 'doomed', vm: facts.vmId, policy: { hostWaitTimeout: '10 seconds' } });
  await waitForTransfer(handle, 2 * MiB);
  await stack.lab.stopVm('doomed').catch(() => undefined);
  await stack.lab.deleteVm('doomed');
  const { text: why } = await failureOf(handle.result());
  expect(why).toMatch(/doomed|not found|VmUnreachable|VmNotFound/);
  expect(await stack.server.repository.listPoints('doomed')).toEqual([]);
  // No session left holding chunks against GC.
  expect((await stack.server.repository.listSessions()).filter((s) => s.dataSource === 'doomed')).toEqual([]);
});

test('a host that dies mid-transfer (kill -9 of its agent): the backup follows the VM to the node that took it over', async () => {
  const content = { kind: 'random' as const, seed: 74, fill: 1 };
  const facts = await stack.lab.createVm({ name: 'failover', host: 'hv01', storage: 'csv', disks: [{ sizeBytes: 24 * MiB, content }] });
  // hv01's agent as a process, so that it dies at once: no grace to finish the transfer in.
  await stack.stopAgent('hv01');
  const agent = await stack.spawnAgent('hv01', ['--batch-slots', '4', '--throttle', '12']);
  try {
    const handle = await start({ dataSource: 'failover', vm: facts.vmId });
    await waitForTransfer(handle, 2 * MiB);
    agent.kill('SIGKILL'); // the host dies…
    await new Promise((r) => agent.once('exit', r));
    await stack.lab.migrateVm('failover', 'hv02'); // …and the cluster moves its VM
    const r = (await handle.result()) as BackupVmResult;
    expect(r.host).toBe('hv02');
    expect(r.disks[0].readBy).toBe('hv02');
    expect(r.disks[0].attemptBytesRead).toBeGreaterThan(0);
    expect((await restored('failover', r.pointId, facts.disks[0].diskId)).equals(initialDiskContent(content, 24 * MiB))).toBe(true);
    await noLeftovers('failover');
  } finally {
    await stack.startAgent('hv01');
  }
});

test('a host that never returns, with the VM still on it: fails with a clear reason in bounded time', async () => {
  const facts = await stack.lab.createVm({ name: 'stranded', host: 'hv01', disks: [{ sizeBytes: 4 * MiB }] });
  await stack.stopAgent('hv01');
  try {
    const t0 = Date.now();
    const { text: why } = await failureOf((await start({ dataSource: 'stranded', vm: facts.vmId, policy: { hostWaitTimeout: '15 seconds' } })).result());
    expect(why).toMatch(/was not found on any of the hosts with a running agent .* for 0 min|start the agent on the VM's host/);
    expect(Date.now() - t0).toBeLessThan(90_000);
  } finally {
    await stack.startAgent('hv01');
  }
  expect((await stack.lab.inspectVm('stranded')).checkpoints).toEqual([]);
});

test('a storage API that drops connections mid-upload: the transfer retries and the point is whole', async () => {
  // A TCP proxy that cuts every connection once it has carried 3 MiB (mid-request, mid-upload);
  // the agent talks through it.
  const target = new URL(stack.server.storageApi.url);
  let n = 0;
  let cuts = 0;
  const proxy = net.createServer((c) => {
    n++;
    const up = net.connect(Number(target.port), target.hostname);
    let seen = 0;
    c.on('data', (d) => {
      seen += d.length;
      if (seen > 3 * MiB) {
        cuts++;
        c.destroy();
        up.destroy();
      }
    });
    c.pipe(up).pipe(c);
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  const { startAgent } = await import('../../workers/agent');
  const { LabHypervisor } = await import('../../hypervisor/lab');
  const { createLogger } = await import('../../log/logger');
  await stack.stopAgent('hv03');
  const flaky = await startAgent({
    logger: createLogger({ name: 'flaky', level: 'error', format: 'json', destination: path.join(stack.dir, 'flaky.log') }),
    adapter: await LabHypervisor.open(stack.lab, 'hv03'),
    // Pinned to the proxy: the agent's own address for the server wins over the one jobs carry.
    servers: [{ id: stack.server.id, token: await stack.agentToken('hv03'), storageUrl: `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}` }],
    temporal: stack.temporal,
    batchSlots: 4,
  });
  try {
    const content = { kind: 'random' as const, seed: 75, fill: 1 };
    const facts = await stack.lab.createVm({ name: 'flaky-net', host: 'hv03', disks: [{ sizeBytes: 16 * MiB, content }] });
    const r = (await (await start({ dataSource: 'flaky-net', vm: facts.vmId })).result()) as BackupVmResult;
    expect(cuts).toBeGreaterThanOrEqual(2);
    expect(n).toBeGreaterThan(cuts);
    expect((await restored('flaky-net', r.pointId, facts.disks[0].diskId)).equals(initialDiskContent(content, 16 * MiB))).toBe(true);
    await noLeftovers('flaky-net');
  } finally {
    await flaky.shutdown();
    proxy.close();
    await stack.startAgent('hv03');
  }
});
