// The lab CLI commands and the sample lab npm start uses: its VMs' disks hold real file systems
// (checked here by sfdisk, fsstat, fls/istat/icat, fsck.fat, ntfsfix and e2fsck, none of them ours),
// and the guest write load keeps out of them.
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { Lab, LabHypervisor, createSampleLab, labCommand } from '../../hypervisor/lab';
import { sampleDiskLayout } from '../../hypervisor/lab/guest-images';
import { checkGuestDisk, type CheckedVolume } from '../guestfs/support';
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
    const s = await createSampleLab(lab, { diskSize: 2 * MiB, fileSystems: false });
    expect(Object.keys(s.vms).sort()).toEqual(['app-linux01', 'file01', 'smb01', 'sql01', 'web01', 'web01-replica']);
    for (const f of Object.values(s.vms)) {
      const hv = await LabHypervisor.open(lab, f.host);
      expect((await hv.inspectVm(f.vmId)).name).toBe(f.name);
    }
    expect(s.vms['web01-replica'].replica.role).toBe('replica');
    expect(s.vms['web01'].cluster?.name).toBe('hvclu01');
    const again = await createSampleLab(lab, { diskSize: 2 * MiB, fileSystems: false });
    expect(Object.keys(again.vms).length).toBe(6);
  });
});

/** A lab disk as the guest sees it, in a raw file. */
async function rawDisk(lab: Lab, vm: string, diskId: string, size: number, file: string): Promise<string> {
  const fh = await fsp.open(file, 'w');
  try {
    for (let o = 0; o < size; o += 8 * MiB) await fh.write(await lab.readDisk(vm, diskId, o, Math.min(8 * MiB, size - o)), 0, undefined, o);
  } finally {
    await fh.close();
  }
  return file;
}

const istat = (v: CheckedVolume, p: string) => {
  const e = v.entries.find((x) => x.path === p);
  if (!e) throw new Error(`fls does not list ${p} on ${v.label}`);
  return execFileSync('istat', [v.image, e.inode]).toString();
};
/** Runs of a file's clusters, from istat's cluster list. */
const runsOf = (v: CheckedVolume, p: string) => {
  const clusters = istat(v, p).split('$DATA').pop()!.split(/\s+/).filter((w) => /^\d+$/.test(w)).map(Number);
  return clusters.filter((c, i) => i === 0 || c !== clusters[i - 1] + 1).length;
};

describe("the sample VMs' guest file systems", () => {
  let lab: Lab;
  let root: string;
  let cleanup: () => Promise<void>;
  const size = 128 * MiB;
  beforeAll(async () => {
    ({ lab, root, cleanup } = await tempLab());
    await createSampleLab(lab);
  }, 120_000);
  afterAll(() => cleanup());

  it('are GPT disks of FAT32, NTFS and ext4 volumes that Debian tools and The Sleuth Kit read and check clean', async () => {
    const expected: Record<string, string[][]> = {
      web01: [['fat32 SYSTEM', 'ntfs Windows'], ['ntfs Data']],
      'app-linux01': [['ext4 rootfs']],
      file01: [['fat32 SYSTEM', 'ntfs Windows', 'fat32 E-DATA']],
      sql01: [['fat32 SYSTEM', 'ntfs Windows']],
      smb01: [['fat32 SYSTEM', 'ntfs Windows']],
    };
    const vms = await lab.listVms();
    expect(vms.length).toBe(6); // and web01's replica, a copy
    for (const vm of vms) {
      const facts = await lab.inspectVm(vm.vmId);
      for (const [i, d] of facts.disks.entries()) {
        expect(d.virtualSize).toBe(size);
        const vols = checkGuestDisk(await rawDisk(lab, vm.vmId, d.diskId, size, path.join(root, `${vm.vmId}-${d.diskId}.raw`)), root);
        expect(vols.map((v) => `${v.fileSystem} ${v.label}`)).toEqual(expected[vm.name][i]);
        for (const v of vols) {
          if (v.fileSystem === 'ntfs' && v.label === 'Windows') {
            const files = v.entries.filter((e) => e.kind === 'file' && !e.path.startsWith('/$'));
            expect(files.length).toBeGreaterThan(3000);
            // 2,000 entries in one folder: an index B+ tree (the root holds only a pointer to the index blocks)
            expect(v.entries.filter((e) => e.path.startsWith('/Windows/System32/component-')).length).toBe(2000);
            expect(istat(v, '/Windows/System32')).toMatch(/\$INDEX_ALLOCATION \(160-\d+\)\s+Name: \$I30\s+Non-Resident\s+size: \d{6,}/);
            expect(v.entries.some((e) => e.path === '/Users/Administrator/Documents/Отчёт за квартал — 季度报告 — تقرير ربع سنوي — a long Unicode name of many scripts.txt')).toBe(true);
            expect(runsOf(v, '/data/fragmented.bin')).toBeGreaterThanOrEqual(10);
            expect(istat(v, '/data/sparse.vhd')).toMatch(/Non-Resident, Sparse/);
            const hello = v.entries.find((e) => e.path === '/Users/Public/hello.txt')!;
            expect(v.entries.find((e) => e.path === '/Users/Public/hello-hardlink.txt')!.inode).toBe(hello.inode);
            expect(istat(v, '/Users/Public/hello.txt')).toMatch(/Links: 2/);
            expect(v.entries.find((e) => e.path === '/empty.txt')!.size).toBe(0);
            const big = v.entries.find((e) => e.path === '/data/big.log')!;
            expect(big.size).toBe(Math.floor((v.size * 0.4) / MiB) * MiB);
            const lines: string[] = [];
            for (let n = 1, len = 0; len < big.size; n++) len += (lines[lines.length] = `line ${n} of the big log of the hvprotect sample guest\n`).length;
            expect(execFileSync('icat', [v.image, big.inode], { maxBuffer: 1 << 30 }).equals(Buffer.from(lines.join('')).subarray(0, big.size))).toBe(true);
          }
          if (v.fileSystem === 'ext4') {
            expect(v.entries.filter((e) => e.kind === 'file').length).toBeGreaterThan(1700);
            expect(v.entries.find((e) => e.path === '/home/ubuntu/hello-hardlink.txt')!.inode).toBe(v.entries.find((e) => e.path === '/home/ubuntu/hello.txt')!.inode);
            expect(v.entries.find((e) => e.path === '/home/ubuntu/link-to-hello')!.kind).toBe('symlink');
            expect(execFileSync('debugfs', ['-R', 'htree /usr/share/doc', v.image], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()).toMatch(/Number of entries/);
          }
          if (v.label === 'E-DATA') expect(v.entries.filter((e) => e.path.startsWith('/Shares/Finance/invoice-')).length).toBe(300);
          if (v.label === 'SYSTEM') expect(v.entries.some((e) => e.path === '/EFI/Microsoft/Boot/bootmgfw.efi' && e.size === 1500000)).toBe(true);
        }
      }
    }
  }, 180_000);

  it('the guest write load writes only to the unpartitioned tail: the file systems still check clean and list the same', async () => {
    const before = await rawDisk(lab, 'web01', 'scsi0-0', size, path.join(root, 'before.raw'));
    const volsBefore = checkGuestDisk(before, root);
    const load = await lab.startWriteLoad({ vm: 'web01', seed: 77, intervalMs: 0, batch: 32, maxWrites: 600 });
    expect((await load.exited).writes).toBe(600);
    const rec = (await lab.state()).vms[load.vmId];
    const tail = sampleDiskLayout('windows', size).freeTail;
    expect(rec.writeLoad?.region).toEqual(tail);
    const after = await rawDisk(lab, 'web01', 'scsi0-0', size, path.join(root, 'after.raw'));
    const [a, b] = [await fsp.readFile(before), await fsp.readFile(after)];
    expect(a.subarray(0, tail.offset).equals(b.subarray(0, tail.offset))).toBe(true);
    expect(a.subarray(tail.offset + tail.length).equals(b.subarray(tail.offset + tail.length))).toBe(true);
    expect(a.subarray(tail.offset, tail.offset + tail.length).equals(b.subarray(tail.offset, tail.offset + tail.length))).toBe(false); // it did write
    const volsAfter = checkGuestDisk(after, root);
    expect(volsAfter.map((v) => v.entries.map((e) => `${e.path} ${e.size}`).sort())).toEqual(volsBefore.map((v) => v.entries.map((e) => `${e.path} ${e.size}`).sort()));
  }, 120_000);

  it('a disk with no unused space, or a file system without a partition table, gets no write load', async () => {
    const fat = path.join(root, 'bare-fat.img');
    execFileSync('mkfs.fat', ['-F', '32', '-C', fat, String(40 * 1024)], { stdio: 'ignore' });
    const full = path.join(root, 'full-gpt.img');
    await fsp.writeFile(full, Buffer.alloc(0));
    await fsp.truncate(full, 40 * MiB);
    execFileSync('sfdisk', ['-q', full], { input: 'label: gpt\nstart=2048, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n' });
    for (const [name, image, error] of [['bare01', fat, /holds a fat32 file system without a partition table/], ['full01', full, /leave no unused space/]] as const) {
      await lab.createVm({ name, host: 'hv03', disks: [{ sizeBytes: 40 * MiB, image }] });
      await expect(lab.startWriteLoad({ vm: name, seed: 1, maxWrites: 1 })).rejects.toThrow(error);
    }
  });
});
