// Restores on the real stack: disks exported as raw and VHDX (read back through qemu-img too),
// the whole VM to its original place and to another host, where it "boots".
import { randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { failureOf, startTestStack, type TestStack } from '../support/stack';
import { initialDiskContent } from '../../hypervisor/lab';
import { openVhdx } from '../../vhdx';
import type { BackupVmResult } from '../../workflows/backup-vm';
import type { RestoreVmInput, RestoreVmResult } from '../../workflows/restore-vm';
import { protectVm, protectionState, startJob } from '../../client/protection';

const MiB = 1024 * 1024;
let stack: TestStack;
let point: BackupVmResult;
let expected: Map<string, Buffer>;
let vmId: string;

function hasQemuImg(): boolean {
  try {
    execFileSync('qemu-img', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function restore(input: RestoreVmInput): Promise<RestoreVmResult> {
  if (input.target.kind === 'original') {
    // Through the protection, as the CLI does: never beside a backup or check of the VM.
    const { handle } = await startJob(stack.client, input.dataSource, { kind: 'restore', by: 'test', restore: input });
    try {
      return (await handle.result()) as RestoreVmResult;
    } finally {
      while ((await protectionState(stack.client, input.dataSource)).running) await new Promise((r) => setTimeout(r, 50));
    }
  }
  return stack.client.workflow.execute('restoreVm', {
    taskQueue: stack.server.taskQueue,
    workflowId: `restore/${input.dataSource}/${randomUUID()}`,
    args: [input],
  });
}

beforeAll(async () => {
  stack = await startTestStack({ hosts: ['hv01', 'hv02'] });
  const contents = [
    { kind: 'random' as const, seed: 31, fill: 0.5 },
    { kind: 'random' as const, seed: 32, fill: 0.2 },
  ];
  const facts = await stack.lab.createVm({
    name: 'app01',
    host: 'hv01',
    disks: [{ sizeBytes: 12 * MiB, content: contents[0] }, { sizeBytes: 6 * MiB + 4096 * 3, content: contents[1] }],
  });
  vmId = facts.vmId;
  expected = new Map(facts.disks.map((d, i) => [d.diskId, initialDiskContent(contents[i], d.virtualSize)]));
  await protectVm(stack.client, { server: stack.server.id, vm: { vmId, name: 'app01', host: 'hv01', state: 'running' }, dataSource: 'app01', schedule: { everyHours: 24 } });
  point = await stack.client.workflow.execute('backupVm', {
    taskQueue: stack.server.taskQueue,
    workflowId: `backup/app01/${randomUUID()}`,
    args: [{ dataSource: 'app01', vm: vmId }],
  });
});
afterAll(async () => {
  await stack?.stop();
});

test('disks exported as raw equal the disks at backup time', async () => {
  const dir = path.join(stack.dir, 'export-raw');
  const r = await restore({ dataSource: 'app01', pointId: point.pointId, target: { kind: 'export', host: 'hv02', dir, format: 'raw' } });
  expect(r.disks).toHaveLength(2);
  for (const d of r.disks) {
    expect(fs.readFileSync(d.path).equals(expected.get(d.diskId)!)).toBe(true);
    expect(d.chunksVerified).toBeGreaterThan(0);
  }
});

test('disks exported as VHDX read the same through our reader and qemu-img', async () => {
  const dir = path.join(stack.dir, 'export-vhdx');
  const r = await restore({ dataSource: 'app01', target: { kind: 'export', host: 'hv01', dir, format: 'vhdx' } });
  for (const d of r.disks) {
    const want = expected.get(d.diskId)!;
    const disk = await openVhdx(d.path);
    try {
      expect((await disk.read(0, disk.virtualSize)).equals(want)).toBe(true);
    } finally {
      await disk.close();
    }
    if (hasQemuImg()) {
      execFileSync('qemu-img', ['check', '-f', 'vhdx', d.path], { stdio: 'pipe' });
      const raw = `${d.path}.qemu.raw`;
      execFileSync('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', d.path, raw]);
      expect(fs.readFileSync(raw).subarray(0, want.length).equals(want)).toBe(true);
    }
  }
});

test('restore to the original place refuses a running VM, then restores it off and it boots', async () => {
  const first = [...expected.keys()][0];
  await stack.lab.writeDisk('app01', first, 0, Buffer.alloc(MiB, 0xdd)); // the running guest's own data
  const refused = await failureOf(restore({ dataSource: 'app01', target: { kind: 'original' } }));
  expect(refused.types).toContain('VmNotOff');
  expect(refused.text).toMatch(/app01 is running on hv01: turn it off/);
  // Refused before anything was written: the running VM's disk is as the guest left it.
  expect((await stack.lab.readDisk('app01', first, 0, MiB)).equals(Buffer.alloc(MiB, 0xdd))).toBe(true);
  expect((await stack.lab.inspectVm('app01')).state).toBe('running');
  await stack.lab.writeDisk('app01', first, 0, Buffer.alloc(MiB, 0xee)); // the guest damages it after the backup
  await stack.lab.stopVm('app01');
  const r = await restore({ dataSource: 'app01', target: { kind: 'original' } });
  expect(r.host).toBe('hv01');
  const facts = await stack.lab.inspectVm('app01');
  expect(facts.vmId).toBe(vmId);
  expect(facts.state).toBe('off');
  for (const [diskId, want] of expected) {
    expect((await stack.lab.readDisk('app01', diskId, 0, want.length)).equals(want)).toBe(true);
  }
  await stack.lab.startVm('app01');
  expect((await stack.lab.inspectVm('app01')).state).toBe('running');
});

test('restore as a new VM on another host: config and disks there, and it boots', async () => {
  const r = await restore({ dataSource: 'app01', target: { kind: 'host', host: 'hv02', name: 'app01-copy', newId: true } });
  expect(r.vmName).toBe('app01-copy');
  const facts = await stack.lab.inspectVm(r.vmId!);
  expect(facts.host).toBe('hv02');
  expect(facts.disks.map((d) => d.diskId).sort()).toEqual([...expected.keys()].sort());
  for (const [diskId, want] of expected) {
    expect((await stack.lab.readDisk(r.vmId!, diskId, 0, want.length)).equals(want)).toBe(true);
  }
  await stack.lab.startVm(r.vmId!);
  expect((await stack.lab.inspectVm(r.vmId!)).state).toBe('running');
});

test('an unknown recovery point is a clear failure', async () => {
  const dir = path.join(stack.dir, 'unknown-point');
  const refused = await failureOf(restore({ dataSource: 'app01', pointId: 'nope', target: { kind: 'export', host: 'hv01', dir, format: 'raw' } }));
  expect(refused.types).toContain('UnknownRecoveryPoint');
  expect(refused.text).toMatch(/no recovery point nope of app01; `hvprotect rp list app01` lists them/);
  expect(fs.existsSync(dir)).toBe(false);
});
