// The repository's disk fills up mid-backup (a small tmpfs holds the repository): the backup
// fails with a clear reason, no recovery point appears, the VM is left running with no
// checkpoint, and once space is freed the next backup succeeds.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { startTestStack, type TestStack } from '../support/stack';
import { initialDiskContent } from '../../hypervisor/lab';
import { openDiskStream } from '../../recovery';
import type { BackupVmResult } from '../../workflows/backup-vm';

const MiB = 1024 * 1024;
let stack: TestStack;
let mnt: string;

beforeAll(async () => {
  mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-full-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=12m', 'tmpfs', mnt]); // needs root, as CI has
  stack = await startTestStack({ hosts: ['hv01'], repositoryDir: path.join(mnt, 'repository') });
});
afterAll(async () => {
  await stack?.stop();
  try {
    execFileSync('umount', [mnt]);
  } finally {
    fs.rmSync(mnt, { recursive: true, force: true });
  }
});

test('ENOSPC in the repository: clear failure, no point, no checkpoint; the next backup after freeing space works', async () => {
  const content = { kind: 'random' as const, seed: 81, fill: 1 };
  const facts = await stack.lab.createVm({ name: 'fat', host: 'hv01', disks: [{ sizeBytes: 20 * MiB, content }] });
  const start = () =>
    stack.client.workflow.start('backupVm', {
      taskQueue: stack.server.taskQueue,
      workflowId: `backup/fat/${randomUUID()}`,
      args: [{ dataSource: 'fat', vm: facts.vmId, timing: { heartbeatTimeout: '5 seconds' } }],
    });
  const handle = await start();
  let why = '';
  try {
    await handle.result();
  } catch (err) {
    for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) why += `${(e as Error).message} | `;
  }
  expect(why).toMatch(/repository volume is full/);
  expect(await stack.server.repository.listPoints('fat')).toEqual([]);
  const f = await stack.lab.inspectVm('fat');
  expect(f.checkpoints).toEqual([]);
  expect(f.state).toBe('running');

  // Make room (a bigger volume), then back up again.
  execFileSync('mount', ['-o', 'remount,size=64m', mnt]);
  const r = (await (await start()).result()) as BackupVmResult;
  const { stream } = await openDiskStream(stack.server.repository, 'fat', r.pointId, facts.disks[0].diskId);
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  expect(Buffer.concat(parts).equals(initialDiskContent(content, 20 * MiB))).toBe(true);
}, 180_000);
