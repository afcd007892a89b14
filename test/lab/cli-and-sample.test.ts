// The lab CLI commands and the sample lab npm start uses.
import type { Command } from 'commander';
import { Lab, LabHypervisor, createSampleLab, labCommand } from '../../hypervisor/lab';
import { MiB, tempLab } from './helpers';

async function run(root: string, ...args: string[]): Promise<unknown> {
  let out = '';
  const spy = jest.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => {
    out += c.toString();
    return true;
  });
  try {
    const cmd = labCommand();
    // Errors throw instead of exiting the test process (subcommands copy settings when made, so set each).
    const quiet = (c: Command): void => {
      c.exitOverride().configureOutput({ writeErr: () => undefined });
      c.commands.forEach(quiet);
    };
    quiet(cmd);
    await cmd.parseAsync(['--lab', root, ...args], { from: 'user' });
  } finally {
    spy.mockRestore();
  }
  return out ? JSON.parse(out) : undefined;
}

describe('lab CLI and sample lab', () => {
  let lab: Lab;
  let root: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => ({ lab, root, cleanup } = await tempLab()));
  afterAll(() => cleanup());

  it('creates, changes, migrates and writes to VMs', async () => {
    await run(root, 'cluster', 'add', 'c1', 'n1', 'n2');
    await run(root, 'host', 'add', 'fs1', '--file-server');
    const vm = (await run(root, 'vm', 'create', 'cli01', '--host', 'n1', '--storage', 'csv', '--disk', '2MiB', '--disk', '1m', '--seed', '5')) as { vmId: string; disks: { virtualSize: number }[] };
    expect(vm.disks.map((d) => d.virtualSize)).toEqual([2 * MiB, MiB]);
    const f = (await run(root, 'vm', 'set', 'cli01', '--backup-is', 'off', '--volume', 'C:,NTFS', '--volume', 'D:,ReFS,dynamic,shadow=C:', '--group-state', 'failed', '--replica', 'primary', '--replica-server', 'n2', '--passthrough', 'scsi0-1')) as Record<string, unknown>;
    expect(f).toMatchObject({
      integrationServices: { backup: { enabled: false } },
      volumes: [{ name: 'C:', fileSystem: 'NTFS', dynamicDisk: false }, { name: 'D:', fileSystem: 'ReFS', dynamicDisk: true, shadowStorageOn: 'C:' }],
      cluster: { groupState: 'failed' },
      replica: { role: 'primary', replicaServer: 'n2' },
      disks: [{ passthrough: false }, { passthrough: true }],
    });
    await run(root, 'vm', 'pause', 'cli01');
    expect((await lab.getVm(vm.vmId)).state).toBe('paused');
    await run(root, 'vm', 'resume', 'cli01');
    expect(await run(root, 'vm', 'migrate', 'cli01', '--to', 'n2')).toMatchObject({ withinCluster: true, from: 'n1', to: 'n2' });
    expect(await run(root, 'write-load', 'cli01', '--seed', '3', '--max-writes', '4', '--interval-ms', '0')).toMatchObject({ writes: 4, stopReason: 'max-writes' });
    expect(await run(root, 'vm', 'list', '--host', 'n2')).toEqual([expect.objectContaining({ name: 'cli01', state: 'running' })]);
    await run(root, 'vm', 'delete', 'cli01');
    expect(await run(root, 'vm', 'list')).toEqual([]);
    await expect(run(root, 'vm', 'create', 'x', '--host', 'n1', '--disk', 'lots')).rejects.toThrow(/not a size/);
  });

  it('builds the sample lab: every VM inspectable by its host, idempotently', async () => {
    const s = await createSampleLab(lab, { diskSize: 2 * MiB });
    expect(Object.keys(s.vms).sort()).toEqual(['app-linux01', 'file01', 'smb01', 'sql01', 'web01', 'web01-replica']);
    for (const f of Object.values(s.vms)) {
      const hv = await LabHypervisor.open(lab, f.host);
      expect((await hv.inspectVm(f.vmId)).name).toBe(f.name);
    }
    expect(s.vms['web01-replica'].replica.role).toBe('replica');
    expect(s.vms['web01'].cluster?.name).toBe('hvclu01');
    const again = await createSampleLab(lab, { diskSize: 2 * MiB });
    expect(Object.keys(again.vms).length).toBe(6);
  });
});
