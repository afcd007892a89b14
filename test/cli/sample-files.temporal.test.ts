// npm start's sample VMs against the real stack: their guest file systems (guest-images.ts) are what
// `hvprotect files volumes` lists, and backed up while the guest write load runs on web01 (as
// `npm start` does), every volume of the raw restore still checks clean with Debian's own tools
// (fsck.fat -n, ntfsfix -n, e2fsck -fn) and The Sleuth Kit lists the same tree as `files ls`.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createSampleLab, type WriteLoadProcess } from '../../hypervisor/lab';
import { sampleDiskLayout, type SampleDiskKind } from '../../hypervisor/lab/guest-images';
import { startTestStack, type TestStack } from '../support/stack';
import { checkGuestDisk, listingLines } from '../guestfs/support';

const MiB = 1024 * 1024;
const SIZE = 128 * MiB;
const CLI = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
let stack: TestStack;
let load: WriteLoadProcess;

function hvp(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: { ...process.env, TEMPORAL_ADDRESS: stack.temporal.address, TEMPORAL_NAMESPACE: stack.temporal.namespace, HVPROTECT_SERVER_DIR: stack.server.stateDir, TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr: stderr.trim() }));
  });
}

async function json<T>(args: string[]): Promise<T> {
  const r = await hvp([...args, '--json']);
  if (r.code !== 0) throw new Error(`hvprotect ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

const disksOf: Record<string, SampleDiskKind[]> = { web01: ['windows', 'windows-data'], 'app-linux01': ['linux'], file01: ['file-server'] };

beforeAll(async () => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  stack = await startTestStack({ hosts: ['hv01', 'hv02', 'hv03'], cluster: { name: 'hvclu01', nodes: ['hv01', 'hv02'] }, fileServers: ['fs01'] });
  await createSampleLab(stack.lab);
  load = await stack.lab.startWriteLoad({ vm: 'web01', seed: 2026, intervalMs: 0, batch: 8 });
  for (const vm of Object.keys(disksOf)) {
    await json(['protect', 'add', vm, '--at', '03:00', '--server', stack.server.id]);
    await json(['backup', vm, '--wait']);
  }
}, 300_000);
afterAll(async () => {
  await load?.stop().catch(() => undefined);
  await stack?.stop();
});

test('files volumes lists every sample volume: disk, partition, file system, label, size', async () => {
  for (const [vm, kinds] of Object.entries(disksOf)) {
    const vols = await json<Array<{ volume: string; disk: string; partition: number; fileSystem: string; label: string; size: number }>>(['files', 'volumes', vm]);
    const expected = kinds.flatMap((k, i) =>
      sampleDiskLayout(k, SIZE).partitions.map((p) => ({ volume: `scsi0-${i}p${p.number}`, disk: `scsi0-${i}`, partition: p.number, fileSystem: p.fileSystem, label: p.label, size: p.size })),
    );
    expect(vols).toEqual(expected);
  }
});

test('backed up under the guest write load, the volumes of the raw restore check clean and list as files ls does', async () => {
  expect((await stack.lab.state()).vms[load.vmId].writeLoad!.writes).toBeGreaterThan(0);
  for (const vm of Object.keys(disksOf)) {
    const dir = path.join(stack.dir, `raw-${vm}`);
    const r = await json<{ disks: { diskId: string; path: string }[] }>(['restore', vm, '--host', 'hv03', '--to', dir, '--format', 'raw']);
    for (const d of r.disks) {
      for (const v of checkGuestDisk(d.path, dir)) {
        const ours = await json<Array<{ path: string; type: string; size: number }>>(['files', 'ls', vm, `${d.diskId}p${v.partition}:/`, '--recursive']);
        expect(listingLines(ours)).toEqual(listingLines(v.entries));
      }
    }
  }
});
