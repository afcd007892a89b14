// #18: what anyone who can reach Temporal could ask an agent's restore activities to do, replayed
// against the real activities (real storage API, real lab host, real files): exports into /etc,
// climbing out with "..", onto a UNC share, through a symlink, over an existing file or into a VM's
// own folder are refused and leave the files there untouched; importing over a running VM or from
// disks the agent did not restore is refused inside the activity. A permitted export restores
// bit for bit, 0600.
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createRestoreHostActivities, type RestoreDisksRequest, type RestoredDisk } from '../../activities/host/restore';
import { LabHypervisor } from '../../hypervisor/lab';
import { backup, randomDisk } from '../repository/support';
import { startFixture, tempDir, type Fixture } from '../storage-api/support';
import { tempLab } from '../lab/helpers';

const CS = 64 * 1024;
let f: Fixture;
let disk: Buffer;
let pointId: string;
let root: string;
let grant: string;
let lab: Awaited<ReturnType<typeof tempLab>>;
let adapter: LabHypervisor;

beforeAll(async () => {
  f = await startFixture({ defaultChunkSize: CS, encoderThreads: 0, createChunkFolders: false });
  disk = randomDisk(12 * CS, 18);
  pointId = (await backup(f.repo, 'vm', disk)).pointId;
  grant = (await f.restoreJob({ dataSource: 'vm', pointId })).grant;
  root = await fsp.realpath(await tempDir('hvp-restore-root-'));
  lab = await tempLab();
  await lab.lab.createHost('hv1');
  adapter = await LabHypervisor.open(lab.root, 'hv1');
});
afterAll(async () => {
  await f.close();
  await lab.cleanup();
});

// The lab itself lives in the temp folder: only `root` is a restore root here.
const activities = () => createRestoreHostActivities({ adapter, storageFor: () => f.agent, restoreRoots: [root] });
const request = (targetDir: string | undefined, restoreId = 'wf-1'): RestoreDisksRequest => ({
  server: { id: 'dpm01', storageUrl: 'http://unused' },
  grant,
  dataSource: 'vm',
  pointId,
  disks: [{ diskId: 'disk0', virtualSize: disk.length, chunkSize: CS, fileName: 'app.vhdx' }],
  targetDir,
  format: 'raw',
  restoreId,
});
const restore = (req: RestoreDisksRequest) => new MockActivityEnvironment().run(activities().restoreDisks, req) as Promise<RestoredDisk[]>;

test('exports outside the restore roots are refused: /etc, relative "..", UNC, a symlink out', async () => {
  await expect(restore(request('/etc/hvprotect-planted'))).rejects.toMatchObject({ type: 'RestoreTargetRefused', message: expect.stringMatching(/outside this host's restore roots/) });
  await expect(fsp.stat('/etc/hvprotect-planted')).rejects.toMatchObject({ code: 'ENOENT' });
  await expect(restore(request('../../../../etc'))).rejects.toMatchObject({ type: 'RestoreTargetRefused', message: expect.stringMatching(/not an absolute path/) });
  await expect(restore(request(`${root}/a/../../escape`))).rejects.toMatchObject({ type: 'RestoreTargetRefused', message: expect.stringMatching(/contains "\.\."/) });
  await expect(restore(request('\\\\fs01\\share\\x'))).rejects.toMatchObject({ type: 'RestoreTargetRefused', message: expect.stringMatching(/UNC/) });
  await expect(restore(request('//fs01/share/x'))).rejects.toMatchObject({ type: 'RestoreTargetRefused', message: expect.stringMatching(/UNC/) });
  const outside = await tempDir('hvp-outside-');
  await fsp.symlink(outside, path.join(root, 'link-out'));
  await expect(restore(request(path.join(root, 'link-out', 'sub')))).rejects.toMatchObject({ type: 'RestoreTargetRefused', message: expect.stringMatching(/outside this host's restore roots/) });
  expect(await fsp.readdir(outside)).toEqual([]);
});

test('an export never writes over an existing file, and a permitted one restores bit for bit, 0600', async () => {
  const dir = path.join(root, 'exports');
  await fsp.mkdir(dir);
  const victim = path.join(dir, 'app.raw');
  await fsp.writeFile(victim, 'precious');
  await expect(restore(request(dir))).rejects.toMatchObject({ type: 'RestoreTargetRefused', message: expect.stringMatching(/exists already/) });
  expect(await fsp.readFile(victim, 'utf8')).toBe('precious');
  expect((await fsp.readdir(dir)).sort()).toEqual(['app.raw']);

  const ok = path.join(root, 'exports2', 'deeper');
  const [out] = await restore(request(ok, 'wf-2'));
  expect(out.path).toBe(path.join(ok, 'app.raw'));
  expect((await fsp.readFile(out.path)).equals(disk)).toBe(true);
  expect((await fsp.stat(out.path)).mode & 0o777).toBe(0o600);
  expect(await fsp.readdir(ok)).toEqual(['app.raw']); // no partial file left behind
});

test("an export into a registered VM's own folder is refused and its disk is untouched", async () => {
  const vm = await lab.lab.createVm({ name: 'live01', host: 'hv1', disks: [{ sizeBytes: 12 * CS }] });
  const live = (await adapter.inspectVm(vm.vmId)).disks[0].path;
  // The VM's folder is under a restore root (D:\\Hyper-V under D:\\ on a real host).
  const acts = createRestoreHostActivities({ adapter, storageFor: () => f.agent, restoreRoots: [root, lab.root] });
  const before = await fsp.readFile(live);
  await expect(new MockActivityEnvironment().run(acts.restoreDisks, { ...request(path.dirname(live), 'wf-3'), format: 'vhdx' as const })).rejects.toMatchObject({
    type: 'RestoreTargetRefused',
    message: expect.stringMatching(/holds the disks or configuration of VM live01/),
  });
  expect((await fsp.readFile(live)).equals(before)).toBe(true);
});

test('importing over a running VM, or from disks the agent did not restore, is refused inside the activity', async () => {
  const vm = await lab.lab.createVm({ name: 'run01', host: 'hv1', disks: [{ sizeBytes: 12 * CS }] });
  const facts = await adapter.inspectVm(vm.vmId);
  await adapter.startVm!(vm.vmId);
  const env = new MockActivityEnvironment();
  // Someone else's live disk as the "restored" file.
  await expect(env.run(activities().importRestoredVm, { config: facts.config, disks: [{ diskId: facts.disks[0].diskId, path: facts.disks[0].path }], replace: true })).rejects.toMatchObject({
    type: 'RestoreTargetRefused',
  });
  // Disks from the agent's staging folder, but the VM is running.
  const [staged] = await restore({ ...request(undefined, `wf-import-${process.pid}-${Date.now()}`), format: 'vhdx' });
  await expect(env.run(activities().importRestoredVm, { config: facts.config, disks: [{ diskId: facts.disks[0].diskId, path: staged.path }], replace: true })).rejects.toMatchObject({
    type: 'VmNotOff',
  });
  expect((await adapter.inspectVm(vm.vmId)).state).toBe('running');
  await fsp.rm(path.dirname(staged.path), { recursive: true, force: true });
});
