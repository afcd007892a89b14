// One contract for every HypervisorAdapter: the lab adapter on a real file-backed lab, and the
// Hyper-V adapter against the fake pwsh answering in PowerShell 7's shapes and in Windows
// PowerShell 5.1's (dates as \/Date()\/, enums as numbers, {value,Count} arrays). The fake models
// the VM's power state the way the scripts change it (their text is held to that by contracts.js).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Lab, LabHypervisor } from '../../hypervisor/lab';
import { HypervisorError, type HypervisorAdapter, type VmState } from '../../hypervisor/types';
import { exitOf, spawnTsMain, tempLab } from '../lab/helpers';
import { CKPT, WIN_VM, fakeHost, type Step } from './support';

const MiB = 1024 * 1024;
const LABEL = 'backup/contract/1';
const REPLICA_VM = '2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e';

interface Arranged {
  adapter: HypervisorAdapter;
  vmId: string;
  state(): Promise<VmState>;
}

interface Implementation {
  /** A running VM, nothing else. */
  runningVm(): Promise<Arranged>;
  /** A VM an administrator paused. */
  pausedBySomeoneElse(): Promise<Arranged>;
  /** A VM our offline checkpoint paused before its process was killed (no checkpoint made). */
  leftPausedByKilledAttempt(): Promise<Arranged>;
  /** A checkpoint after guest writes since the change-tracking id `base`. */
  writtenSince(): Promise<Arranged & { base: string; checkpointId: string; diskId: string; written: { offset: number; length: number } }>;
  /** A Hyper-V Replica secondary, seen by the adapter of its replica server. */
  replicaVm(): Promise<Arranged>;
  /** An adapter of one host and a VM that lives on `owner`. */
  vmElsewhere(): Promise<{ adapter: HypervisorAdapter; vm: string; owner: string }>;
}

function labImplementation(): Implementation & { cleanup(): Promise<void> } {
  let lab: Lab;
  let cleanup = async () => undefined as void;
  let n = 0;
  const ready = (async () => {
    ({ lab, cleanup } = await tempLab('hvp-contract-'));
    await lab.createCluster('clu', ['hv1', 'hv2']);
    await lab.createHost('dr1'); // a replica server outside the cluster
  })();
  const vm = async (opts: { linux?: boolean } = {}) => {
    await ready;
    const facts = await lab.createVm({
      name: `vm${++n}`,
      host: 'hv1',
      disks: [{ sizeBytes: 4 * MiB, content: { kind: 'random', seed: n, fill: 0.5 } }],
      ...(opts.linux ? { guestOsFamily: 'linux' as const } : {}),
    });
    const adapter = await LabHypervisor.open(lab, 'hv1');
    return { adapter, vmId: facts.vmId, state: async () => (await lab.getVm(facts.vmId)).state };
  };
  return {
    cleanup: async () => {
      await ready;
      await cleanup();
    },
    runningVm: () => vm(),
    pausedBySomeoneElse: async () => {
      const a = await vm();
      await lab.pauseVm(a.vmId);
      return a;
    },
    leftPausedByKilledAttempt: async () => {
      const a = await vm({ linux: true });
      const child = spawnTsMain(path.join(__dirname, '..', 'lab', 'fixtures', 'checkpoint-child.ts'), [lab.root, 'hv1', a.vmId, LABEL, 'pause'], ['ignore', 'ignore', 'pipe'], {
        HVPROTECT_CRASH_AT: 'lab:checkpoint-quiesced',
      });
      expect(await exitOf(child)).toBe('SIGKILL');
      return a;
    },
    writtenSince: async () => {
      const a = await vm();
      const c0 = await a.adapter.createBackupCheckpoint(a.vmId, { mode: 'online', label: 'c0' });
      await a.adapter.releaseCheckpoint(a.vmId, c0.checkpointId);
      const written = { offset: MiB, length: 64 * 1024 };
      await lab.writeDisk(a.vmId, 'scsi0-0', written.offset, Buffer.alloc(written.length, 7));
      const c1 = await a.adapter.createBackupCheckpoint(a.vmId, { mode: 'online', label: 'c1' });
      return { ...a, base: c0.disks[0].changeTrackingId, checkpointId: c1.checkpointId, diskId: 'scsi0-0', written };
    },
    replicaVm: async () => {
      const a = await vm();
      const rep = await lab.enableReplication(a.vmId, 'dr1');
      return { adapter: await LabHypervisor.open(lab, 'dr1'), vmId: rep.vmId, state: async () => (await lab.getVm(rep.vmId)).state };
    },
    vmElsewhere: async () => {
      await ready;
      const facts = await lab.createVm({ name: `far${++n}`, host: 'hv2', storage: 'csv', disks: [{ sizeBytes: MiB }] });
      return { adapter: await LabHypervisor.open(lab, 'hv1'), vm: facts.vmId, owner: 'hv2' };
    },
  };
}

function hyperVImplementation(shape: '5.1' | '7'): Implementation & { cleanup(): Promise<void> } {
  const dirs: string[] = [];
  const fixture = (name: string) => JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', name), 'utf8'));
  const host = (steps: Step[], state: 'Running' | 'Paused' | 'Off') => {
    const f = fakeHost(steps, {}, { vm: { state }, shape });
    dirs.push(f.dir);
    return { f, arranged: { adapter: f.adapter, vmId: WIN_VM, state: async () => (await f.adapter.inspectVm(WIN_VM)).state } };
  };
  const inspect: Step = { op: 'inspect', fixture: 'inspect-windows.json' };
  return {
    cleanup: async () => {
      for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    },
    runningVm: async () =>
      host(
        [
          { op: 'create-checkpoint', expectParams: { label: LABEL }, fixture: 'create-checkpoint-online.json' },
          { op: 'create-checkpoint', expectParams: { label: LABEL }, result: { ...fixture('create-checkpoint-online.json'), reused: true, trace: [] } },
          { op: 'release-checkpoint', expectParams: { checkpointId: CKPT, heldQuiet: '' }, fixture: 'release.json' },
        ],
        'Running',
      ).arranged,
    pausedBySomeoneElse: async () =>
      host(
        [
          { op: 'create-checkpoint', expectParams: { mode: 'offline', offlineMethod: 'none', heldQuiet: '' }, result: { ...fixture('create-checkpoint-online.json'), consistencyLevel: 2 } },
          { op: 'release-checkpoint', fixture: 'release.json' },
          inspect,
        ],
        'Paused',
      ).arranged,
    leftPausedByKilledAttempt: async () => {
      const { f, arranged } = host(
        [{ op: 'checkpoints-by-label', expectParams: { label: LABEL }, result: { vmId: WIN_VM, checkpointIds: [] } }, { op: 'power', result: { before: 'Paused', after: 'Running' } }, inspect],
        'Paused',
      );
      // What the create-checkpoint script leaves on disk before it pauses the VM.
      fs.mkdirSync(path.join(f.dir, 'rct'), { recursive: true });
      fs.writeFileSync(path.join(f.dir, 'rct', `${WIN_VM}.checkpoint.json`), JSON.stringify({ version: 1, label: LABEL, quiesced: 'pause', checkpointId: null, at: '2026-11-24T03:00:00Z' }));
      return arranged;
    },
    writtenSince: async () => {
      const GiB = 1024 * MiB;
      const { arranged } = host(
        [
          { op: 'describe-checkpoint', fixture: 'describe-checkpoint.json' },
          {
            op: 'disk-changes',
            expectParams: { limitId: 'rctX:base:1' },
            result: { pages: [{ ByteOffset: 0, ByteLength: GiB - MiB, ProcessedByteLength: GiB, ChangedByteOffsets: [MiB], ChangedByteLengths: [64 * 1024] }], failed: null },
          },
        ],
        'Running',
      );
      return { ...arranged, base: 'rctX:base:1', checkpointId: CKPT, diskId: 'scsi0-0', written: { offset: MiB, length: 64 * 1024 } };
    },
    replicaVm: async () => {
      const replicaInspect: Step = { op: 'inspect', fixture: 'inspect-replica.json' };
      // What the power script answers for a replica (contracts.js holds the script to refusing).
      const refused = (action: string): Step => ({
        op: 'power',
        expectParams: { action },
        error: { type: 'HypervisorCommandFailed', message: 'the VM is a Hyper-V Replica secondary: hvprotect never pauses, saves, resumes or starts it', step: 'Get-VM', replica: true },
      });
      const { f, arranged } = host(
        [
          replicaInspect,
          { op: 'create-checkpoint', expectParams: { mode: 'offline', offlineMethod: 'save' }, fixture: 'create-checkpoint-replica.json' },
          replicaInspect,
          { op: 'release-checkpoint', fixture: 'release-replica.json' },
          replicaInspect,
          refused('pause'),
          refused('save'),
          refused('resume'),
          replicaInspect,
        ],
        'Off',
      );
      return { ...arranged, vmId: REPLICA_VM, state: async () => (await f.adapter.inspectVm(REPLICA_VM)).state };
    },
    vmElsewhere: async () => {
      const { f } = host([{ op: 'inspect', error: { type: 'VmNotOnHost', message: 'the VM is not on this host; its cluster group is owned by HV02', step: 'Get-ClusterResource', host: 'HV02', vmId: WIN_VM } }], 'Running');
      return { adapter: f.adapter, vm: 'SQL01', owner: 'HV02' };
    },
  };
}

describe.each([
  ['the lab adapter', labImplementation],
  ['the Hyper-V adapter (PowerShell 7 output)', () => hyperVImplementation('7')],
  ['the Hyper-V adapter (Windows PowerShell 5.1 output)', () => hyperVImplementation('5.1')],
] as const)('HypervisorAdapter contract: %s', (_name, make) => {
  const impl = make();
  afterAll(() => impl.cleanup());

  test('a checkpoint is idempotent by label: a retried request gets the same one', async () => {
    const { adapter, vmId } = await impl.runningVm();
    const first = await adapter.createBackupCheckpoint(vmId, { mode: 'online', label: LABEL });
    const again = await adapter.createBackupCheckpoint(vmId, { mode: 'online', label: LABEL });
    expect(again.checkpointId).toBe(first.checkpointId);
    expect(again.disks.map((d) => d.diskId)).toEqual(first.disks.map((d) => d.diskId));
    await adapter.releaseCheckpoint(vmId, first.checkpointId);
  });

  test('release leaves a VM someone else paused as it was', async () => {
    const { adapter, vmId, state } = await impl.pausedBySomeoneElse();
    const c = await adapter.createBackupCheckpoint(vmId, { mode: 'offline', offlineMethod: 'none', label: LABEL });
    await adapter.releaseCheckpoint(vmId, c.checkpointId);
    expect(await state()).toBe('paused');
  });

  test('release by label resumes the VM our killed offline attempt left paused', async () => {
    const { adapter, vmId, state } = await impl.leftPausedByKilledAttempt();
    await adapter.releaseCheckpointsByLabel!(vmId, LABEL);
    expect(await state()).toBe('running');
  });

  test('changed ranges since a change-tracking id cover what the guest wrote', async () => {
    const { adapter, vmId, base, checkpointId, diskId, written } = await impl.writtenSince();
    const r = await adapter.changedRanges(vmId, checkpointId, diskId, base);
    expect(r.tracked).toBe(true);
    const covering = r.ranges.find((x) => x.offset <= written.offset && x.offset + x.length >= written.offset + written.length);
    expect(covering).toBeDefined();
  });

  test('a Hyper-V Replica secondary is backed up as it is: never paused, saved, resumed or started, crash-consistent', async () => {
    const { adapter, vmId, state } = await impl.replicaVm();
    expect((await adapter.inspectVm(vmId)).replica.role).toBe('replica');
    // Even asked to save it (the workflow asks for no quiescing), the replica is left as replication keeps it.
    const c = await adapter.createBackupCheckpoint(vmId, { mode: 'offline', offlineMethod: 'save', label: LABEL });
    expect(c.disks.length).toBeGreaterThan(0);
    expect(c.consistency?.achieved).toBe('crash-consistent');
    expect(await state()).toBe('off');
    await adapter.releaseCheckpoint(vmId, c.checkpointId);
    expect(await state()).toBe('off');
    for (const act of [() => adapter.pauseVm(vmId), () => adapter.saveVm(vmId), () => adapter.resumeVm(vmId)]) await expect(act()).rejects.toBeInstanceOf(HypervisorError);
    expect(await state()).toBe('off');
  });

  test('a VM on another host is VmNotOnHost naming its owner', async () => {
    const { adapter, vm, owner } = await impl.vmElsewhere();
    const e = await adapter.inspectVm(vm).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(HypervisorError);
    expect((e as HypervisorError).type).toBe('VmNotOnHost');
    expect((e as HypervisorError).details.host).toBe(owner);
  });
});
