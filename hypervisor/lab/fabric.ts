// The lab's fabric: hosts (Hyper-V hosts and SMB file servers), clusters of them, and where VMs are.
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { VmSummary } from '../types';
import { isSafeName } from './state';
import { LabError, type LabStore } from './store';

export async function createHost(lab: LabStore, name: string, opts: { fileServer?: boolean } = {}): Promise<void> {
  if (!isSafeName(name)) throw new LabError(`bad host name ${JSON.stringify(name)}`);
  await lab.mutate('createHost', async (s) => {
    const h = s.hosts[name] ?? { createdAt: new Date().toISOString() };
    if (opts.fileServer) h.fileServer = true;
    s.hosts[name] = h;
    await fsp.mkdir(path.join(lab.paths.hostFolder(name), 'vms'), { recursive: true });
  });
}

/** Create a cluster of `nodes` (hosts are created if missing); adding nodes to an existing cluster is allowed. */
export async function createCluster(lab: LabStore, name: string, nodes: string[]): Promise<void> {
  if (!isSafeName(name)) throw new LabError(`bad cluster name ${JSON.stringify(name)}`);
  if (!Array.isArray(nodes) || nodes.length === 0) throw new LabError(`cluster ${name} needs at least one node`);
  for (const n of nodes) if (!isSafeName(n)) throw new LabError(`bad host name ${JSON.stringify(n)}`);
  await lab.mutate('createCluster', async (s) => {
    for (const n of nodes) {
      const other = s.hosts[n]?.cluster;
      if (other && other !== name) throw new LabError(`host ${n} is already a node of cluster ${other}`);
    }
    const c = s.clusters[name] ?? { nodes: [] };
    for (const n of nodes) {
      s.hosts[n] ??= { createdAt: new Date().toISOString() };
      s.hosts[n].cluster = name;
      if (!c.nodes.includes(n)) c.nodes.push(n);
      await fsp.mkdir(path.join(lab.paths.hostFolder(n), 'vms'), { recursive: true });
    }
    s.clusters[name] = c;
    await fsp.mkdir(lab.paths.csvFolder(name), { recursive: true });
  });
}

/** Who owns the VM now (follows migrations at once). */
export async function locateVm(lab: LabStore, vm: string): Promise<{ vmId: string; name: string; host: string; cluster?: string }> {
  const s = await lab.state();
  const rec = lab.findVm(s, vm);
  return { vmId: rec.vmId, name: rec.name, host: rec.host, cluster: s.hosts[rec.host]?.cluster };
}

export async function listVms(lab: LabStore, host?: string): Promise<VmSummary[]> {
  const s = await lab.state();
  return Object.values(s.vms)
    .filter((v) => host === undefined || v.host === host)
    .map((v) => ({ vmId: v.vmId, name: v.name, host: v.host, state: v.state, ...(v.clustered ? { cluster: v.clustered.cluster } : {}) }));
}
