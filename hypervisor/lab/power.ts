// Power states of a lab VM: start, stop, pause, save, resume (as Hyper-V allows them).
import type { VmState } from '../types';
import * as vhdx from './vhdx-io';
import { failed, type LabStore } from './store';

/** Start (or restore from saved) a VM; its disks must open, as a booting VM's would. */
export async function startVm(lab: LabStore, vm: string, host?: string): Promise<void> {
  await lab.mutate('startVm', async (s) => {
    const rec = host ? lab.findVmOnHost(s, vm, host) : lab.findVm(s, vm);
    if (rec.state === 'running') return;
    for (const d of rec.disks) {
      const p = lab.paths.topPath(rec, d);
      try {
        await (await vhdx.openDisk(p, false)).close();
      } catch (e) {
        throw failed(`VM ${rec.name} cannot start: disk ${d.diskId} (${p}) does not open: ${(e as Error).message}`, { vmId: rec.vmId, diskId: d.diskId });
      }
    }
    rec.state = 'running';
    if (rec.checkpoint) delete rec.checkpoint.resumeTo;
  });
}

/** Turn a VM off. */
export async function stopVm(lab: LabStore, vm: string, host?: string): Promise<void> {
  await lab.mutate('stopVm', async (s) => {
    const rec = host ? lab.findVmOnHost(s, vm, host) : lab.findVm(s, vm);
    rec.state = 'off';
    if (rec.checkpoint) delete rec.checkpoint.resumeTo;
  });
}

export async function transition(lab: LabStore, vm: string, host: string | undefined, to: 'paused' | 'saved' | 'running'): Promise<void> {
  await lab.mutate(`${to}Vm`, async (s) => {
    const rec = host ? lab.findVmOnHost(s, vm, host) : lab.findVm(s, vm);
    const from = rec.state;
    if (from === to) return;
    const allowed: Record<typeof to, VmState[]> = { paused: ['running'], saved: ['running', 'paused'], running: ['paused', 'saved'] };
    if (!allowed[to].includes(from)) {
      const verb = { paused: 'pause', saved: 'save', running: 'resume' }[to];
      throw failed(`cannot ${verb} VM ${rec.name}: it is ${from}${from === 'off' ? ' (start it instead)' : ''}`, { vmId: rec.vmId, state: from });
    }
    rec.state = to;
    if (to === 'running' && rec.checkpoint) delete rec.checkpoint.resumeTo;
  });
}
