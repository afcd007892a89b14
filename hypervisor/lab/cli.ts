// `lab` commands: create and change lab hosts, clusters and VMs from a shell. Mount with
// `program.addCommand(labCommand())`, or run `node dist/hypervisor/lab/cli.js --lab ROOT …`.
import { Command, InvalidArgumentError } from 'commander';
import type { ClusterGroupState, GuestVolume, VmState } from '../types';
import { Lab, type LabDiskSpec, type LabVmPatch, type StorageSpec } from './lab';
import { runGuestWriteLoad } from './guest-write-load';
import { createSampleLab } from './sample';
import { changeGuestFile } from './guest-files';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kib: 1024, m: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tib: 1024 ** 4 };

/** "64MiB", "1g", "4096" → bytes. */
export function parseSize(v: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(v.trim());
  const unit = m ? UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new InvalidArgumentError(`not a size: ${v} (e.g. 64MiB, 1GiB)`);
  return Math.round(Number(m[1]) * unit);
}

function parseStorage(v: string): StorageSpec {
  if (v === 'local' || v === 'csv') return v;
  const smb = /^smb:([^/]+)\/(.+)$/.exec(v);
  if (smb) return { smb: { fileServer: smb[1], share: smb[2] } };
  if (v.startsWith('/')) return { folder: v };
  throw new InvalidArgumentError('local | csv | smb:<fileServer>/<share> | /absolute/folder');
}

/** "C:,NTFS[,dynamic][,shadow=E:]" */
function parseVolume(v: string, prev: GuestVolume[] = []): GuestVolume[] {
  const [name, fileSystem, ...rest] = v.split(',');
  if (!name || !fileSystem) throw new InvalidArgumentError('NAME,FS[,dynamic][,shadow=VOL], e.g. C:,NTFS');
  const vol: GuestVolume = { name, fileSystem, dynamicDisk: rest.includes('dynamic') };
  const shadow = rest.find((r) => r.startsWith('shadow='));
  if (shadow) vol.shadowStorageOn = shadow.slice('shadow='.length);
  return [...prev, vol];
}

function collect<T>(parse: (v: string) => T) {
  return (v: string, prev: T[] = []) => [...prev, parse(v)];
}

function onOff(v: string): boolean {
  if (v === 'on' || v === 'true') return true;
  if (v === 'off' || v === 'false') return false;
  throw new InvalidArgumentError('on | off');
}

function int(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError('an integer');
  return n;
}

const print = (x: unknown): void => {
  process.stdout.write(JSON.stringify(x, null, 2) + '\n');
};

export function labCommand(): Command {
  const cmd = new Command('lab')
    .description('Create and change lab Hyper-V hosts, clusters and VMs (file-backed, for Linux)')
    .option('--lab <root>', 'the lab folder', process.env.HVPROTECT_LAB ?? '.hvprotect/dev/lab');
  const open = () => Lab.open(cmd.opts<{ lab: string }>().lab);

  cmd.command('init').description('create an empty lab').action(async () => print({ root: (await open()).root }));
  cmd
    .command('sample')
    .description('create the sample cluster, hosts and VMs (what npm start uses)')
    .option('--disk-size <size>', 'size of each sample disk', parseSize)
    .action(async (o: { diskSize?: number }) => {
      const s = await createSampleLab(await open(), { diskSize: o.diskSize });
      print({ ...s, vms: Object.fromEntries(Object.entries(s.vms).map(([k, v]) => [k, { vmId: v.vmId, host: v.host }])) });
    });
  cmd.command('state').description('print lab.json').action(async () => print(await (await open()).state()));

  const host = cmd.command('host').description('lab hosts');
  host
    .command('add <name>')
    .option('--file-server', 'an SMB file server')
    .action(async (name: string, o: { fileServer?: boolean }) => (await open()).createHost(name, { fileServer: o.fileServer }));
  const cluster = cmd.command('cluster').description('lab clusters');
  cluster
    .command('add <name> <nodes...>')
    .description('create a cluster (or add nodes to it)')
    .action(async (name: string, nodes: string[]) => (await open()).createCluster(name, nodes));

  const vm = cmd.command('vm').description('lab VMs');
  vm
    .command('list')
    .option('--host <host>')
    .action(async (o: { host?: string }) => print(await (await open()).listVms(o.host)));
  vm.command('show <vm>').action(async (v: string) => print(await (await open()).inspectVm(v)));
  vm
    .command('create <name>')
    .requiredOption('--host <host>')
    .option('--id <vmId>')
    .option('--disk <size>', 'a disk (repeat for more)', collect(parseSize))
    .option('--seed <n>', 'fill the disks with random content from this seed', int)
    .option('--fill <share>', 'share of 1 MiB regions holding data (0..1)', Number, 0.5)
    .option('--storage <where>', 'local | csv | smb:<fs>/<share> | /folder', parseStorage)
    .option('--state <state>', 'running | paused | saved | off')
    .option('--guest-os <name>')
    .option('--linux', 'a Linux guest')
    .option('--volume <spec>', 'guest volume NAME,FS[,dynamic][,shadow=VOL] (repeat)', (v: string, p?: GuestVolume[]) => parseVolume(v, p))
    .action(async (name: string, o: { host: string; id?: string; disk?: number[]; seed?: number; fill: number; storage?: StorageSpec; state?: VmState; guestOs?: string; linux?: boolean; volume?: GuestVolume[] }) => {
      const disks: LabDiskSpec[] = (o.disk ?? [64 * 1024 * 1024]).map((sizeBytes, i) => ({
        sizeBytes,
        ...(o.seed !== undefined ? { content: { kind: 'random' as const, seed: o.seed + i, fill: o.fill } } : {}),
      }));
      print(
        await (await open()).createVm({
          name,
          host: o.host,
          vmId: o.id,
          state: o.state,
          storage: o.storage,
          guestOs: o.guestOs,
          guestOsFamily: o.linux ? 'linux' : undefined,
          volumes: o.volume ?? (o.linux ? [{ name: '/', fileSystem: 'ext4', dynamicDisk: false }] : undefined),
          disks,
        }),
      );
    });
  vm
    .command('set <vm>')
    .description('change VM properties')
    .option('--name <name>')
    .option('--state <state>', 'set the state as is: running | paused | saved | off')
    .option('--guest-os <name>')
    .option('--guest-os-family <family>', 'windows | linux | other')
    .option('--guest-os-version <v>')
    .option('--backup-is <on|off>', 'the VSS (backup) integration service', onOff)
    .option('--backup-is-responding <on|off>', '', onOff)
    .option('--volume <spec>', 'replace the guest volumes: NAME,FS[,dynamic][,shadow=VOL] (repeat)', (v: string, p?: GuestVolume[]) => parseVolume(v, p))
    .option('--clustered <on|off>', 'a role of its host cluster', onOff)
    .option('--group-state <state>', 'cluster group state: online | offline | partial | failed')
    .option('--replica <role>', 'none | primary | replica')
    .option('--primary-server <host>')
    .option('--replica-server <host>')
    .option('--passthrough <diskId>', 'mark a disk passthrough', collect(String))
    .option('--ide <diskId>', 'move a disk to the IDE controller', collect(String))
    .option('--patch <json>', 'a LabVmPatch as JSON (applied first)', (v: string) => JSON.parse(v) as LabVmPatch)
    .action(async (v: string, o: Record<string, unknown>) => {
      const p: LabVmPatch = { ...((o.patch as LabVmPatch) ?? {}) };
      if (o.name !== undefined) p.name = o.name as string;
      if (o.state !== undefined) p.state = o.state as VmState;
      if (o.guestOs !== undefined) p.guestOs = o.guestOs as string;
      if (o.guestOsFamily !== undefined) p.guestOsFamily = o.guestOsFamily as LabVmPatch['guestOsFamily'];
      if (o.guestOsVersion !== undefined) p.guestOsVersion = o.guestOsVersion as string;
      if (o.backupIs !== undefined || o.backupIsResponding !== undefined) {
        p.integrationServices = { backup: { ...(o.backupIs !== undefined ? { enabled: o.backupIs as boolean } : {}), ...(o.backupIsResponding !== undefined ? { responding: o.backupIsResponding as boolean } : {}) } };
      }
      if (o.volume !== undefined) p.volumes = o.volume as GuestVolume[];
      if (o.clustered === false) p.clustered = false;
      else if (o.clustered === true || o.groupState !== undefined) p.clustered = o.groupState ? { groupState: o.groupState as ClusterGroupState } : true;
      if (o.replica !== undefined) p.replica = { role: o.replica as 'none', primaryServer: o.primaryServer as string | undefined, replicaServer: o.replicaServer as string | undefined };
      const disks: NonNullable<LabVmPatch['disks']> = { ...(p.disks ?? {}) };
      for (const d of (o.passthrough as string[]) ?? []) disks[d] = { ...disks[d], passthrough: true };
      for (const d of (o.ide as string[]) ?? []) disks[d] = { ...disks[d], controller: 'ide' };
      if (Object.keys(disks).length) p.disks = disks;
      print(await (await open()).setVmProperties(v, p));
    });
  for (const verb of ['start', 'stop', 'pause', 'save', 'resume'] as const) {
    vm.command(`${verb} <vm>`).action(async (v: string) => {
      const lab = await open();
      await { start: lab.startVm, stop: lab.stopVm, pause: lab.pauseVm, save: lab.saveVm, resume: lab.resumeVm }[verb].call(lab, v);
    });
  }
  vm
    .command('migrate <vm>')
    .requiredOption('--to <host>')
    .action(async (v: string, o: { to: string }) => print(await (await open()).migrateVm(v, o.to)));
  vm
    .command('replicate <vm>')
    .description('enable Hyper-V Replica: create a replica VM on another host')
    .requiredOption('--to <host>')
    .action(async (v: string, o: { to: string }) => print(await (await open()).enableReplication(v, o.to)));
  vm.command('delete <vm>').action(async (v: string) => (await open()).deleteVm(v));
  const files = vm.command('files').description("change a file inside a guest's file system (NTFS, ext4, FAT) through the guest write path");
  files
    .command('put <vm> <item> <source>')
    .description('copy the local file SOURCE to VOLUME:PATH in the guest (VOLUME = <diskId>p<N> or the label); folders are made')
    .action(async (v: string, item: string, source: string) => print(await changeGuestFile(await open(), v, item, { put: source })));
  files
    .command('rm <vm> <item>')
    .description('remove the file VOLUME:PATH in the guest')
    .action(async (v: string, item: string) => print(await changeGuestFile(await open(), v, item, { rm: true })));

  cmd
    .command('write-load <vm>')
    .description('write to a VM disk like a busy guest, deterministic from a seed, until Ctrl-C')
    .requiredOption('--seed <n>', '', int)
    .option('--disk <id>')
    .option('--interval-ms <n>', '', int, 20)
    .option('--batch <n>', '', int, 4)
    .option('--max-writes <n>', '', int)
    .action(async (v: string, o: { seed: number; disk?: string; intervalMs: number; batch: number; maxWrites?: number }) => {
      const ac = new AbortController();
      const stop = () => ac.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      print(await runGuestWriteLoad({ labRoot: (await open()).root, vm: v, seed: o.seed, diskId: o.disk, intervalMs: o.intervalMs, batch: o.batch, maxWrites: o.maxWrites, signal: ac.signal }));
    });
  return cmd;
}

if (require.main === module) {
  labCommand()
    .parseAsync(process.argv)
    .catch((e: Error) => {
      process.stderr.write(`lab: ${e.message}\n`);
      process.exit(1);
    });
}
