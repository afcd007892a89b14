// Waits that fit a backup of hours: a transfer queued behind the host's transfer limit is not
// taken for a silent host (no relocation counted, however often its schedule-to-start passes),
// and a transfer keeps retrying past 50 failed attempts (an outage longer than ~25 minutes of
// production backoff), bounded only by its schedule-to-close timeout.
import { startTestStack, startBackup, restoredBytes, type TestStack } from '../support/stack';
import { initialDiskContent } from '../../hypervisor/lab';
import { HypervisorError, type DiskReader, type HypervisorAdapter } from '../../hypervisor/types';
import type { BackupVmResult } from '../../workflows/backup-vm';

const MiB = 1024 * 1024;
let stack: TestStack;
/** Reads of these VMs fail (retryably) this many more times. */
const failReads = new Map<string, number>();

function flakyReads(_host: string, a: HypervisorAdapter): HypervisorAdapter {
  return new Proxy(a, {
    get(target, prop, receiver) {
      if (prop === 'openCheckpointDisk') {
        return async (vmId: string, checkpointId: string, diskId: string): Promise<DiskReader> => {
          const reader = await target.openCheckpointDisk(vmId, checkpointId, diskId);
          return {
            virtualSize: reader.virtualSize,
            allocatedRanges: () => reader.allocatedRanges(),
            close: () => reader.close(),
            async read(offset: number, length: number, signal?: AbortSignal) {
              const left = failReads.get(vmId) ?? 0;
              if (left > 0) {
                failReads.set(vmId, left - 1);
                throw new HypervisorError('HypervisorCommandFailed', `test: storage unreachable (${left - 1} failures to go)`);
              }
              return reader.read(offset, length, signal);
            },
          };
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

beforeAll(async () => {
  // One transfer at a time per host, 1 MiB/s: the second disk waits ~10 s for its slot.
  stack = await startTestStack({ hosts: ['hv01', 'hv02'], maxConcurrentTransfers: 1, throttleBytesPerSecond: MiB, batchSlots: 4, wrapAdapter: flakyReads });
});
afterAll(async () => {
  await stack?.stop();
});

test('a transfer waiting behind the host transfer limit longer than its schedule-to-start is not a silent host', async () => {
  const contents = [91, 92].map((seed) => ({ kind: 'random' as const, seed, fill: 1 }));
  const vms = await Promise.all(
    contents.map((content, i) => stack.lab.createVm({ name: `queued-${i}`, host: 'hv01', disks: [{ sizeBytes: 10 * MiB, content }] })),
  );
  const timing = { heartbeatTimeout: '5 seconds', locateTimeout: '3 seconds', transferScheduleToStart: '3 seconds' };
  const handles = await Promise.all(vms.map((f, i) => startBackup(stack, { dataSource: `queued-${i}`, vm: f.vmId, policy: { maxRelocations: 1 } }, timing)));
  const results = (await Promise.all(handles.map((h) => h.result()))) as BackupVmResult[];
  for (const [i, r] of results.entries()) {
    expect(r.host).toBe('hv01');
    expect(r.relocations).toBe(0);
    expect((await restoredBytes(stack, `queued-${i}`, r.pointId, vms[i].disks[0].diskId)).equals(initialDiskContent(contents[i], 10 * MiB))).toBe(true);
  }
});

test('a transfer failing 55 times in a row (an outage) keeps retrying and finishes', async () => {
  const content = { kind: 'random' as const, seed: 93, fill: 1 };
  const facts = await stack.lab.createVm({ name: 'outage', host: 'hv01', disks: [{ sizeBytes: 2 * MiB, content }] });
  failReads.set(facts.vmId, 55);
  const handle = await startBackup(stack, { dataSource: 'outage', vm: facts.vmId }, {
    heartbeatTimeout: '5 seconds',
    locateTimeout: '3 seconds',
    transferRetryInterval: { initial: '50 milliseconds', maximum: '100 milliseconds' },
  });
  const r = (await handle.result()) as BackupVmResult;
  expect(failReads.get(facts.vmId)).toBe(0);
  expect((await restoredBytes(stack, 'outage', r.pointId, facts.disks[0].diskId)).equals(initialDiskContent(content, 2 * MiB))).toBe(true);
}, 180_000);
