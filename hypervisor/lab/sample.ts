// A sample lab for the embedded default (`npm start`) and demos: a two-node cluster whose VMs
// cover the online/offline rules, plus a stand-alone host, a replica and an SMB-hosted VM.
//
// The VMs' disks carry real guest file systems made by Debian's tools (guest-images.ts): the
// Windows guests a GPT with an EFI system partition (FAT32) and an NTFS volume holding a Windows
// tree, web01's second disk an NTFS data volume, file01 also a FAT32 E:, the Linux guest ext4.
// Each disk ends in unpartitioned space, where the guest write load writes.
import type { VmFacts } from '../types';
import { sampleDiskImage, type SampleDiskKind } from './guest-images';
import type { Lab, LabDiskSpec, LabVmSpec } from './lab';

export interface SampleLabOptions {
  cluster?: string;
  /** The two cluster nodes. */
  nodes?: [string, string];
  /** A stand-alone host (replica server, target of migrations outside the cluster). */
  standalone?: string;
  fileServer?: string;
  /** Size of each sample disk (default 128 MiB; with file systems at least 128 MiB). */
  diskSize?: number;
  /** Real guest file systems on the disks (default); false: synthetic random content, any size. */
  fileSystems?: boolean;
}

export interface SampleLab {
  cluster: string;
  nodes: [string, string];
  standalone: string;
  fileServer: string;
  /** By name. */
  vms: Record<string, VmFacts>;
}

const MiB = 1024 * 1024;
/** The smallest sample disk size with guest file systems (file01's disk holds an ESP, NTFS and a FAT32 E:). */
export const SAMPLE_FILE_SYSTEMS_MIN_DISK = 128 * MiB;

/** Create the sample hosts and VMs; VMs that exist already (by name) are left alone. */
export async function createSampleLab(lab: Lab, opts: SampleLabOptions = {}): Promise<SampleLab> {
  const cluster = opts.cluster ?? 'hvclu01';
  const nodes = opts.nodes ?? ['hv01', 'hv02'];
  const standalone = opts.standalone ?? 'hv03';
  const fileServer = opts.fileServer ?? 'fs01';
  const size = opts.diskSize ?? 128 * MiB;
  const fileSystems = opts.fileSystems ?? true;
  await lab.createCluster(cluster, nodes);
  await lab.createHost(standalone);
  await lab.createHost(fileServer, { fileServer: true });
  type SampleDisk = LabDiskSpec & { sample: SampleDiskKind };
  const disk = (sample: SampleDiskKind, seed: number, fill = 0.3): SampleDisk => ({ sample, sizeBytes: size, blockSize: MiB, ...(fileSystems ? {} : { content: { kind: 'random' as const, seed, fill } }) });
  const specs: LabVmSpec[] = [
    // Online: Windows, VSS integration service on, NTFS basic volumes, clustered on the CSV.
    { name: 'web01', host: nodes[0], storage: 'csv', disks: [disk('windows', 1), { ...disk('windows-data', 2, 0.1), controller: 'scsi' }] },
    // Offline: a Linux guest cannot take part in VSS.
    { name: 'app-linux01', host: nodes[1], storage: 'csv', guestOs: 'Ubuntu 22.04 LTS', guestOsFamily: 'linux', volumes: [{ name: '/', fileSystem: 'ext4', dynamicDisk: false }], disks: [disk('linux', 3)] },
    // Offline: a dynamic (LDM) disk and a FAT32 volume in the guest, on local storage.
    {
      name: 'file01',
      host: nodes[0],
      volumes: [
        { name: 'C:', fileSystem: 'NTFS', dynamicDisk: false },
        { name: 'D:', fileSystem: 'NTFS', dynamicDisk: true },
        { name: 'E:', fileSystem: 'FAT32', dynamicDisk: false },
      ],
      disks: [disk('file-server', 4)],
    },
    // Offline: backup integration service turned off.
    { name: 'sql01', host: nodes[1], storage: 'csv', integrationServices: { backup: { enabled: false, responding: false } }, disks: [disk('windows', 5)] },
    // Online on a stand-alone host, disks on an SMB share of the file server.
    { name: 'smb01', host: standalone, storage: { smb: { fileServer, share: 'vms' } }, disks: [disk('windows', 6)] },
  ];
  const existing = new Set((await lab.listVms()).map((v) => v.name));
  const missing = specs.filter((s) => !existing.has(s.name));
  // Each kind is built once per size (kept in a cache folder), then copied into each VM's VHDX.
  const kinds = fileSystems ? [...new Set(missing.flatMap((s) => s.disks.map((d) => (d as SampleDisk).sample)))] : [];
  const images = new Map(await Promise.all(kinds.map(async (k) => [k, await sampleDiskImage(k, size)] as const)));
  for (const s of missing) s.disks = (s.disks as SampleDisk[]).map(({ sample, ...d }) => (fileSystems ? { ...d, image: images.get(sample) } : d));
  for (const spec of missing) await lab.createVm(spec);
  // A replica of web01 on the stand-alone host (backed up there without pausing).
  const all = await lab.listVms();
  if (!all.some((v) => v.name === 'web01' && v.host === standalone)) await lab.enableReplication('web01', standalone);
  const vms: Record<string, VmFacts> = {};
  for (const v of await lab.listVms()) vms[v.host === standalone && v.name === 'web01' ? 'web01-replica' : v.name] = await lab.inspectVm(v.vmId);
  return { cluster, nodes, standalone, fileServer, vms };
}
