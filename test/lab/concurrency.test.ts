// Several processes touching one lab: the lock, stale locks, and write loads (child processes)
// racing checkpoints, merges, migrations and property changes.
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Lab, LabHypervisor, LabLockTimeout, expectedDiskContent, initialDiskContent } from '../../hypervisor/lab';
import { withLock } from '../../hypervisor/lab/lock';
import { readState } from '../../hypervisor/lab/state';
import { MiB, exitOf, expectSameBytes, readAll, spawnTsMain, tempLab, waitFor } from './helpers';

describe('the lab lock', () => {
  let root: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => ({ root, cleanup } = await tempLab('hvp-lock-')));
  afterAll(() => cleanup());

  it('excludes other processes', async () => {
    const lock = path.join(root, 'counter.lock');
    const counter = path.join(root, 'counter');
    await fsp.writeFile(counter, '0');
    const fixture = path.join(__dirname, 'fixtures', 'lock-counter.ts');
    const children = [1, 2, 3].map(() => spawnTsMain(fixture, [lock, counter, '40']));
    // This process takes part too.
    for (let i = 0; i < 40; i++) {
      await withLock(lock, async () => {
        const v = Number(await fsp.readFile(counter, 'utf8'));
        await new Promise((r) => setTimeout(r, 1));
        await fsp.writeFile(counter, String(v + 1));
      });
    }
    expect(await Promise.all(children.map(exitOf))).toEqual([0, 0, 0]);
    expect(await fsp.readFile(counter, 'utf8')).toBe('160');
  });

  it('is re-entrant along one call chain and serialises unrelated tasks of one process', async () => {
    const lock = path.join(root, 'inproc.lock');
    let inside = 0;
    let maxInside = 0;
    await Promise.all(
      Array.from({ length: 8 }, () =>
        withLock(lock, async () => {
          maxInside = Math.max(maxInside, ++inside);
          await withLock(lock, async () => new Promise((r) => setTimeout(r, 2)));
          inside--;
        }),
      ),
    );
    expect(maxInside).toBe(1);
  });

  it('breaks the lock of a dead holder and waits for a live one', async () => {
    const lock = path.join(root, 'stale.lock');
    const dead = spawn(process.execPath, ['-e', '0']);
    await exitOf(dead);
    await fsp.writeFile(lock, JSON.stringify({ pid: dead.pid, hostname: require('node:os').hostname(), acquiredAt: '', purpose: 'test' }));
    expect(await withLock(lock, async () => 'got it', { timeoutMs: 2000 })).toBe('got it');

    const live = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)']);
    await fsp.writeFile(lock, JSON.stringify({ pid: live.pid, hostname: require('node:os').hostname(), acquiredAt: '', purpose: 'test' }));
    await expect(withLock(lock, async () => 'no', { timeoutMs: 200 })).rejects.toThrow(LabLockTimeout);
    const waiting = withLock(lock, async () => 'after the holder died', { timeoutMs: 10_000 });
    live.kill('SIGKILL');
    expect(await waiting).toBe('after the holder died');
  });
});

describe('write loads racing checkpoints, merges and migrations', () => {
  let lab: Lab;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ lab, cleanup } = await tempLab());
    await lab.createCluster('clu', ['a', 'b']);
  });
  afterAll(() => cleanup());

  it('keeps every disk and lab.json sound', async () => {
    const SIZE = 2 * MiB;
    const content = { kind: 'random' as const, seed: 1, fill: 0.5 };
    const initial = initialDiskContent(content, SIZE);
    const vms = await Promise.all(
      ['vm1', 'vm2'].map((name) => lab.createVm({ name, host: 'a', storage: 'csv', disks: [{ sizeBytes: SIZE, blockSize: MiB, content }] })),
    );
    const seeds = [101, 202];
    const loads = await Promise.all(vms.map((vm, i) => lab.startWriteLoad({ vm: vm.vmId, seed: seeds[i], intervalMs: 3, batch: 2 })));
    let readerErrors = 0;
    let reading = true;
    const reader = (async () => {
      while (reading) {
        await readState(lab.paths).catch(() => readerErrors++);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    try {
      for (let round = 0; round < 4; round++) {
        for (let i = 0; i < vms.length; i++) {
          const vm = vms[i];
          const owner = (await lab.locateVm(vm.vmId)).host;
          const hv = await LabHypervisor.open(lab, owner);
          const ck = await hv.createBackupCheckpoint(vm.vmId, { mode: round % 2 ? 'offline' : 'online', offlineMethod: 'pause' });
          // Migrate inside the cluster while the backup reads; the reader follows the owner.
          const other = owner === 'a' ? 'b' : 'a';
          await lab.migrateVm(vm.vmId, other);
          await lab.setVmProperties(vm.vmId, { clustered: { groupState: round % 2 ? 'partial' : 'online' } });
          const hv2 = await LabHypervisor.open(lab, other);
          const r = await hv2.openCheckpointDisk(vm.vmId, ck.checkpointId, 'scsi0-0');
          expectSameBytes(await readAll(r), expectedDiskContent(initial, seeds[i], ck.guestWriteSeq!), `${vm.name} round ${round}`);
          await r.close();
          await hv2.releaseCheckpoint(vm.vmId, ck.checkpointId);
        }
      }
      await waitFor(async () => (await lab.getVm(vms[1].vmId)).writeLoad!.writes > 20, 'writes');
    } finally {
      reading = false;
      await reader;
    }
    const results = await Promise.all(loads.map((l) => l.stop()));
    expect(readerErrors).toBe(0);
    for (let i = 0; i < vms.length; i++) {
      expect(results[i].writes).toBeGreaterThan(0);
      expectSameBytes(await lab.readDisk(vms[i].vmId, 'scsi0-0', 0, SIZE), expectedDiskContent(initial, seeds[i], results[i].writes), `${vms[i].name} final`);
    }
  });

  it('recovers from a write load killed in the middle (stale lock), and a restarted load catches up', async () => {
    const SIZE = MiB;
    const vm = await lab.createVm({ name: 'killed', host: 'a', disks: [{ sizeBytes: SIZE, blockSize: MiB }] });
    const load = await lab.startWriteLoad({ vm: vm.vmId, seed: 9, intervalMs: 0, batch: 1 });
    await waitFor(async () => (await lab.getVm(vm.vmId)).writeLoad!.writes >= 5, 'writes');
    process.kill(load.pid, 'SIGKILL');
    await expect(load.exited).rejects.toThrow(/SIGKILL/);
    const hv = await LabHypervisor.open(lab, 'a');
    const ck = await hv.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    await hv.releaseCheckpoint(vm.vmId, ck.checkpointId);
    // The same seed continues from the recorded count, rewriting any write cut off by the kill.
    const again = await lab.startWriteLoad({ vm: vm.vmId, seed: 9, intervalMs: 0, maxWrites: (await lab.getVm(vm.vmId)).writeLoad!.writes + 5 });
    const res = await again.exited;
    expect(res.stopReason).toBe('max-writes');
    expectSameBytes(await lab.readDisk(vm.vmId, 'scsi0-0', 0, SIZE), expectedDiskContent(Buffer.alloc(SIZE), 9, res.writes));
  });

  it('a write load stops by itself when the process that started it dies', async () => {
    const vm = await lab.createVm({ name: 'orphan', host: 'a', disks: [{ sizeBytes: MiB }] });
    const parent = spawnTsMain(path.join(__dirname, 'fixtures', 'orphan-parent.ts'), [lab.root, vm.vmId], ['ignore', 'pipe', 'inherit']);
    let out = '';
    parent.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    expect(await exitOf(parent)).toBe(0);
    const pid = Number(out.trim());
    expect(pid).toBeGreaterThan(0);
    const alive = () => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    await waitFor(async () => !alive(), 'the orphaned write load to stop', 10_000);
    const writes = (await lab.getVm(vm.vmId)).writeLoad!.writes;
    await new Promise((r) => setTimeout(r, 100));
    expect((await lab.getVm(vm.vmId)).writeLoad!.writes).toBe(writes);
  });
});
