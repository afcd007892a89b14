// The Temporal server itself dies (kill -9) in the middle of a backup and comes back on the same
// SQLite file: the backup finishes, whole and restorable. Own dev server: the shared one stays up.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { freePort, startDevServer, type DevServer } from '../../temporal/dev-server';
import { loadTemporalSettings } from '../../temporal/connection';
import { startTestStack, type TestStack } from '../support/stack';
import { initialDiskContent } from '../../hypervisor/lab';
import { openDiskStream } from '../../recovery';
import type { BackupVmResult } from '../../workflows/backup-vm';
import { readBackupProgress } from '../../client/backup-progress';

const MiB = 1024 * 1024;
let dir: string;
let dev: DevServer;
let stack: TestStack;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-restart-'));
  dev = await startDevServer({ dbFile: path.join(dir, 'temporal.sqlite'), port: await freePort(), headless: true });
  stack = await startTestStack({
    hosts: ['hv01'],
    batchSlots: 4,
    throttleBytesPerSecond: 6 * MiB,
    temporal: loadTemporalSettings({ TEMPORAL_ADDRESS: dev.address, TEMPORAL_NAMESPACE: 'default' }),
  });
});
afterAll(async () => {
  await stack?.stop();
  await dev?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('kill -9 of the Temporal server mid-transfer: the backup finishes after it restarts', async () => {
  const content = { kind: 'random' as const, seed: 51, fill: 1 };
  const facts = await stack.lab.createVm({ name: 'survivor', host: 'hv01', disks: [{ sizeBytes: 36 * MiB, content }] });
  const workflowId = `backup/survivor/${randomUUID()}`;
  const handle = await stack.client.workflow.start('backupVm', {
    taskQueue: stack.server.taskQueue,
    workflowId,
    args: [{ dataSource: 'survivor', vm: facts.vmId, timing: { heartbeatTimeout: '10 seconds' } }],
  });
  for (const deadline = Date.now() + 60_000; ; ) {
    const p = await readBackupProgress(handle);
    if (p.bytesRead >= 6 * MiB) break;
    if (Date.now() > deadline) throw new Error('transfer did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  // The embedded server's SQLite runs in WAL mode (temporal/dev-server.ts): the file header's
  // read and write versions are 2, and the log is beside it. kill -9 must lose nothing of it.
  const header = Buffer.alloc(20);
  const fd = fs.openSync(dev.dbFile, 'r');
  try {
    fs.readSync(fd, header, 0, 20, 0);
  } finally {
    fs.closeSync(fd);
  }
  expect(header.subarray(0, 16).toString('latin1')).toBe('SQLite format 3\0');
  expect([header[18], header[19]]).toEqual([2, 2]);
  expect(fs.existsSync(`${dev.dbFile}-wal`)).toBe(true);
  const port = Number(dev.address.split(':').pop());
  await dev.kill();
  await new Promise((r) => setTimeout(r, 2000));
  dev = await startDevServer({ dbFile: dev.dbFile, port, headless: true });
  const r = (await stack.client.workflow.getHandle(workflowId).result()) as BackupVmResult;
  const { stream } = await openDiskStream(stack.server.repository, 'survivor', r.pointId, facts.disks[0].diskId);
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  expect(Buffer.concat(parts).equals(initialDiskContent(content, 36 * MiB))).toBe(true);
  expect((await stack.lab.inspectVm('survivor')).checkpoints).toEqual([]);
});
