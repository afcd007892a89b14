// The audit's attacks (#18), replayed against the real stack (a protection server with its storage
// API, agents, the dev server): with hv01's agent token alone, and with a bare Temporal client
// starting restoreVm itself. Each is refused; nothing is written; the points taken before and after
// restore bit for bit.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { failureOf, restoredBytes, startTestStack, type TestStack } from '../support/stack';
import { initialDiskContent, type InitialContent } from '../../hypervisor/lab';
import type { VmFacts } from '../../hypervisor/types';
import type { BackupVmResult } from '../../workflows/backup-vm';
import type { RestoreVmInput } from '../../workflows/restore-vm';
import { protectVm, protectionState, startBackupNow } from '../../client/protection';
import { StorageApiError, StorageClient } from '../../storage-api';

const MiB = 1024 * 1024;
let stack: TestStack;
const vms: Record<string, { facts: VmFacts; content: InitialContent; points: BackupVmResult[] }> = {};

async function backup(name: string): Promise<void> {
  const result = (await (await startBackupNow(stack.client, { dataSource: name }, 'auto', 'test')).result()) as BackupVmResult;
  while ((await protectionState(stack.client, name)).running) await new Promise((r) => setTimeout(r, 50));
  vms[name].points.push(result);
}

beforeAll(async () => {
  stack = await startTestStack({ hosts: ['hv01', 'hv02'] });
  for (const [name, host, seed] of [['sec-a', 'hv01', 41], ['sec-b', 'hv02', 42]] as const) {
    const content: InitialContent = { kind: 'random', seed, fill: 0.6 };
    const facts = await stack.lab.createVm({ name, host, disks: [{ sizeBytes: 4 * MiB, content }] });
    await protectVm(stack.client, { server: stack.server.id, vm: { vmId: facts.vmId, name, host, state: 'running' }, dataSource: name, schedule: { everyHours: 24 } });
    vms[name] = { facts, content, points: [] };
    await backup(name);
  }
}, 180_000);
afterAll(async () => {
  await stack?.stop();
});

test("hv01's agent token on the running server: sec-b's points, indexes, raw disk and chunks refused; nothing planted", async () => {
  const agent = new StorageClient(stack.server.storageApi.url, await stack.agentToken('hv01'));
  const b = { dataSource: 'sec-b', pointId: vms['sec-b'].points[0].pointId };
  const diskId = vms['sec-b'].facts.disks[0].diskId;
  const refusals = await Promise.all([
    agent.listPoints('sec-b'),
    agent.getPoint(b),
    agent.getIndex(b, diskId),
    agent.openDiskStream(b, diskId),
    agent.beginSession('sec-b'),
    agent.beginSession('constructor'),
    agent.commitPoint('0'.repeat(32), { kind: 'express-full', mode: 'online', createdAt: '9999-12-31T00:00:00.000Z', disks: [{ diskId, fileName: 'x', virtualSize: 4 * MiB }] }),
    agent.beginRestore(b, 7 * 86400),
    agent.putChunk('c'.repeat(64), Buffer.from('PLANTED-BY-STOLEN-AGENT-TOKEN')),
  ].map((p) => p.then(() => undefined, (e: unknown) => e as StorageApiError)));
  expect(refusals.map((e) => [e?.status, e?.code])).toEqual(refusals.map(() => [403, 'FORBIDDEN']));
  expect((await stack.server.repository.listDataSources()).sort()).toEqual(['sec-a', 'sec-b']);
  expect(await stack.server.repository.listSessions()).toEqual([]);
  agent.close();
});

test('a bare Temporal client starting restoreVm: exports into /etc, up a relative path, or into a VM folder are refused by the agent', async () => {
  const start = (target: RestoreVmInput['target']) =>
    stack.client.workflow.execute('restoreVm', { taskQueue: stack.server.taskQueue, workflowId: `restore/attack/${randomUUID()}`, args: [{ dataSource: 'sec-b', target } satisfies RestoreVmInput] });
  const vmFolder = path.dirname(vms['sec-b'].facts.disks[0].basePath);
  const before = fs.readdirSync(vmFolder).sort();
  for (const [dir, why] of [
    ['/etc/hvprotect-planted', /outside this host's restore roots/],
    ['../../../../etc', /not an absolute path/],
    [vmFolder, /holds the disks or configuration of VM sec-b/],
  ] as const) {
    const f = await failureOf(start({ kind: 'export', host: 'hv02', dir, format: 'vhdx' }));
    expect({ dir, types: f.types }).toEqual({ dir, types: expect.arrayContaining(['RestoreTargetRefused']) });
    expect(f.text).toMatch(why);
  }
  expect(fs.existsSync('/etc/hvprotect-planted')).toBe(false);
  expect(fs.readdirSync(vmFolder).sort()).toEqual(before);
  // A legitimate export under the restore root (the system temp folder by default) still works.
  const ok = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-export-'));
  try {
    const r = await start({ kind: 'export', host: 'hv02', dir: ok, format: 'raw' });
    expect(fs.readFileSync((r as { disks: Array<{ path: string }> }).disks[0].path).equals(initialDiskContent(vms['sec-b'].content, 4 * MiB))).toBe(true);
  } finally {
    fs.rmSync(ok, { recursive: true, force: true });
  }
}, 120_000);

test('after the attacks: backups go on, and the points before and after restore bit for bit', async () => {
  for (const name of Object.keys(vms)) await backup(name);
  for (const [name, v] of Object.entries(vms)) {
    expect(v.points).toHaveLength(2);
    for (const p of v.points) {
      const bytes = await restoredBytes(stack, name, p.pointId, v.facts.disks[0].diskId);
      expect({ name, point: p.pointId, same: bytes.equals(initialDiskContent(v.content, 4 * MiB)) }).toEqual({ name, point: p.pointId, same: true });
    }
  }
}, 120_000);
