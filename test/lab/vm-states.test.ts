// VM states, offline checkpoints and how a paused or saved VM's guest stops writing.
import { Lab, LabHypervisor, expectedDiskContent, initialDiskContent, runGuestWriteLoad } from '../../hypervisor/lab';
import { MiB, expectHvError, expectSameBytes, readAll, tempLab, waitFor } from './helpers';

const SIZE = 2 * MiB;

describe('VM states and offline checkpoints', () => {
  let lab: Lab;
  let cleanup: () => Promise<void>;
  let hv: LabHypervisor;
  beforeAll(async () => {
    ({ lab, cleanup } = await tempLab());
    await lab.createHost('hv1');
    hv = await LabHypervisor.open(lab, 'hv1');
  });
  afterAll(() => cleanup());

  it('pauses, saves and resumes by the rules', async () => {
    const vm = await lab.createVm({ name: 'st', host: 'hv1', disks: [] });
    await hv.pauseVm(vm.vmId);
    expect((await hv.inspectVm(vm.vmId)).state).toBe('paused');
    await hv.pauseVm(vm.vmId); // already paused: nothing to do
    await hv.saveVm(vm.vmId);
    expect((await hv.inspectVm(vm.vmId)).state).toBe('saved');
    await expectHvError(hv.pauseVm(vm.vmId), 'HypervisorCommandFailed', /cannot pause VM st: it is saved/);
    await hv.resumeVm(vm.vmId);
    expect((await hv.inspectVm(vm.vmId)).state).toBe('running');
    await lab.stopVm(vm.vmId);
    await expectHvError(hv.resumeVm(vm.vmId), 'HypervisorCommandFailed', /it is off \(start it instead\)/);
    await expectHvError(hv.saveVm(vm.vmId), 'HypervisorCommandFailed');
    await hv.startVm(vm.vmId);
    expect((await lab.listVms('hv1')).find((v) => v.vmId === vm.vmId)?.state).toBe('running');
  });

  it.each(['save', 'pause'] as const)('offline checkpoint (%s) quiets the VM, records the downtime and resumes it at once', async (method) => {
    const content = { kind: 'random' as const, seed: 3 };
    const vm = await lab.createVm({ name: `off-${method}`, host: 'hv1', guestOsFamily: 'linux', disks: [{ sizeBytes: SIZE, blockSize: MiB, content }] });
    // Watch the state lab.json records while the checkpoint is taken.
    const seen = new Set<string>();
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const s = await lab.state();
        seen.add(s.vms[vm.vmId].state);
        await new Promise((r) => setImmediate(r));
      }
    })();
    const ckpt = await hv.createBackupCheckpoint(vm.vmId, { mode: 'offline', offlineMethod: method });
    watching = false;
    await watcher;
    expect(ckpt.mode).toBe('offline');
    expect(typeof ckpt.downtimeMs).toBe('number');
    expect(ckpt.downtimeMs).toBeGreaterThan(0);
    expect((await hv.inspectVm(vm.vmId)).state).toBe('running');
    // The quiet state may be too short to observe; when it is seen, it is the one asked for.
    for (const st of seen) expect(['running', method === 'save' ? 'saved' : 'paused']).toContain(st);
    const r = await hv.openCheckpointDisk(vm.vmId, ckpt.checkpointId, 'scsi0-0');
    expectSameBytes(await readAll(r), initialDiskContent(content, SIZE));
    await r.close();
    await hv.releaseCheckpoint(vm.vmId, ckpt.checkpointId);
    expect((await hv.inspectVm(vm.vmId)).checkpoints).toEqual([]);
  });

  it("an offline checkpoint with offlineMethod none (or none given) leaves a running VM alone", async () => {
    const vm = await lab.createVm({ name: 'replica-like', host: 'hv1', disks: [{ sizeBytes: SIZE }] });
    for (const offlineMethod of ['none', undefined] as const) {
      const ckpt = await hv.createBackupCheckpoint(vm.vmId, { mode: 'offline', offlineMethod });
      expect(ckpt.downtimeMs).toBe(0);
      expect((await hv.inspectVm(vm.vmId)).state).toBe('running');
      await hv.releaseCheckpoint(vm.vmId, ckpt.checkpointId);
    }
    await expectHvError(hv.createBackupCheckpoint(vm.vmId, { mode: 'offline', offlineMethod: 'hibernate' as never }), 'HypervisorCommandFailed', /bad offline method/);
  });

  it('an offline checkpoint of a VM that is off or paused changes nothing and costs no downtime', async () => {
    const vm = await lab.createVm({ name: 'off-already', host: 'hv1', state: 'paused', disks: [{ sizeBytes: SIZE }] });
    const ckpt = await hv.createBackupCheckpoint(vm.vmId, { mode: 'offline', offlineMethod: 'save' });
    expect(ckpt.downtimeMs).toBe(0);
    expect((await hv.inspectVm(vm.vmId)).state).toBe('paused');
    await hv.releaseCheckpoint(vm.vmId, ckpt.checkpointId);
    expect((await hv.inspectVm(vm.vmId)).state).toBe('paused');
  });

  it('a paused or saved VM does not write until resumed', async () => {
    const vm = await lab.createVm({ name: 'quiet', host: 'hv1', disks: [{ sizeBytes: SIZE, blockSize: MiB }] });
    const ac = new AbortController();
    const writes = async () => (await lab.getVm(vm.vmId)).writeLoad?.writes ?? 0;
    const run = runGuestWriteLoad({ labRoot: lab.root, vm: 'quiet', seed: 11, intervalMs: 2, batch: 2, signal: ac.signal });
    try {
      await waitFor(async () => (await writes()) >= 6, 'writes');
      for (const quiet of ['pause', 'save'] as const) {
        await (quiet === 'pause' ? hv.pauseVm(vm.vmId) : hv.saveVm(vm.vmId));
        const at = await writes();
        await new Promise((r) => setTimeout(r, 150));
        expect(await writes()).toBe(at);
        await hv.resumeVm(vm.vmId);
        await waitFor(async () => (await writes()) >= at + 4, 'writes after resume');
      }
    } finally {
      ac.abort();
    }
    const res = await run;
    expect(res.stopReason).toBe('signal');
    expectSameBytes(await lab.readDisk(vm.vmId, 'scsi0-0', 0, SIZE), expectedDiskContent(Buffer.alloc(SIZE), 11, res.writes));
  });

  it('a write load stops at max-writes and continues where it stopped with the same seed', async () => {
    const vm = await lab.createVm({ name: 'resume', host: 'hv1', disks: [{ sizeBytes: SIZE, blockSize: MiB }] });
    const a = await runGuestWriteLoad({ labRoot: lab.root, vm: vm.vmId, seed: 5, intervalMs: 0, maxWrites: 7 });
    expect(a).toMatchObject({ writes: 7, stopReason: 'max-writes' });
    const b = await runGuestWriteLoad({ labRoot: lab.root, vm: vm.vmId, seed: 5, intervalMs: 0, batch: 5, maxWrites: 13 });
    expect(b.writes).toBe(13);
    expectSameBytes(await lab.readDisk(vm.vmId, 'scsi0-0', 0, SIZE), expectedDiskContent(Buffer.alloc(SIZE), 5, 13));
  });

  it('release resumes a VM left quiet by an offline checkpoint cut off before it could resume', async () => {
    const vm = await lab.createVm({ name: 'cut-off', host: 'hv1', disks: [{ sizeBytes: MiB }] });
    const ck = await hv.createBackupCheckpoint(vm.vmId, { mode: 'offline', offlineMethod: 'save' });
    // What lab.json holds when the process dies between quieting the VM and resuming it.
    await lab.mutate('test', async (s) => {
      s.vms[vm.vmId].state = 'saved';
      s.vms[vm.vmId].checkpoint!.resumeTo = 'running';
    });
    await hv.releaseCheckpoint(vm.vmId, ck.checkpointId);
    expect((await hv.inspectVm(vm.vmId)).state).toBe('running');
  });

  it('the write-load process refuses bad arguments and unknown VMs', async () => {
    const { main } = await import('../../hypervisor/lab/guest-write-load');
    const err = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(await main(['--lab', lab.root, '--vm', 'x'])).not.toBe(0); // no seed
      expect(await main(['--lab', lab.root, '--vm', 'x', '--seed', 'abc'])).not.toBe(0);
      expect(await main(['--lab', lab.root, '--vm', 'no-such-vm', '--seed', '1'])).toBe(1);
      expect(err.mock.calls.map((c) => String(c[0])).join('')).toMatch(/no VM "no-such-vm"/);
    } finally {
      err.mockRestore();
    }
  });
});
