// A sample lab for the embedded default (`npm start`) and demos: a two-node cluster whose VMs
// cover the online/offline rules, plus a stand-alone host, a replica and an SMB-hosted VM.
import type { VmFacts } from '../types';
import type { Lab, LabVmSpec } from './lab';

export interface SampleLabOptions {
  cluster?: string;
  /** The two cluster nodes. */
  nodes?: [string, string];
  /** A stand-alone host (replica server, target of migrations outside the cluster). */
  standalone?: string;
  fileServer?: string;
  diskSize?: number;
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

/** Create the sample hosts and VMs; VMs that exist already (by name) are left alone. */
export async function createSampleLab(lab: Lab, opts: SampleLabOptions = {}): Promise<SampleLab> {
  const cluster = opts.cluster ?? 'hvclu01';
  const nodes = opts.nodes ?? ['hv01', 'hv02'];
  const standalone = opts.standalone ?? 'hv03';
  const fileServer = opts.fileServer ?? 'fs01';
  const size = opts.diskSize ?? 64 * MiB;
  await lab.createCluster(cluster, nodes);
  await lab.createHost(standalone);
  await lab.createHost(fileServer, { fileServer: true });
  const disk = (seed: number, fill = 0.3) => ({ sizeBytes: size, blockSize: MiB, content: { kind: 'random' as const, seed, fill } });
  const specs: LabVmSpec[] = [
    // Online: Windows, VSS integration service on, NTFS basic volumes, clustered on the CSV.
    { name: 'web01', host: nodes[0], storage: 'csv', disks: [disk(1), { ...disk(2, 0.1), controller: 'scsi' }] },
    // Offline: a Linux guest cannot take part in VSS.
    { name: 'app-linux01', host: nodes[1], storage: 'csv', guestOs: 'Ubuntu 22.04 LTS', guestOsFamily: 'linux', volumes: [{ name: '/', fileSystem: 'ext4', dynamicDisk: false }], disks: [disk(3)] },
    // Offline: a dynamic (LDM) disk and a FAT32 volume in the guest, on local storage.
    {
      name: 'file01',
      host: nodes[0],
      volumes: [
        { name: 'C:', fileSystem: 'NTFS', dynamicDisk: false },
        { name: 'D:', fileSystem: 'NTFS', dynamicDisk: true },
        { name: 'E:', fileSystem: 'FAT32', dynamicDisk: false },
      ],
      disks: [disk(4)],
    },
    // Offline: backup integration service turned off.
    { name: 'sql01', host: nodes[1], storage: 'csv', integrationServices: { backup: { enabled: false, responding: false } }, disks: [disk(5)] },
    // Online on a stand-alone host, disks on an SMB share of the file server.
    { name: 'smb01', host: standalone, storage: { smb: { fileServer, share: 'vms' } }, disks: [disk(6)] },
  ];
  const existing = new Set((await lab.listVms()).map((v) => v.name));
  for (const spec of specs) if (!existing.has(spec.name)) await lab.createVm(spec);
  // A replica of web01 on the stand-alone host (backed up there without pausing).
  const all = await lab.listVms();
  if (!all.some((v) => v.name === 'web01' && v.host === standalone)) await lab.enableReplication('web01', standalone);
  const vms: Record<string, VmFacts> = {};
  for (const v of await lab.listVms()) vms[v.host === standalone && v.name === 'web01' ? 'web01-replica' : v.name] = await lab.inspectVm(v.vmId);
  return { cluster, nodes, standalone, fileServer, vms };
}
