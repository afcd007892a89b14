// A backup's progress: what the `progress` query answers and what the Web UI shows as the
// workflow's current details: the step, mode, kind and finished disks. A running transfer's
// position is in its heartbeat (client/backup-progress.ts merges it in for the CLI): nothing here
// grows the history while disks transfer. The transferProgress signal is kept for agents of the
// previous release, which still send it during a rolling upgrade.
import { defineQuery, defineSignal, log, setCurrentDetails, setHandler } from '@temporalio/workflow';

export interface DiskProgress {
  diskId: string;
  virtualSize: number;
  position: number;
  bytesRead: number;
  bytesSent: number;
  done: boolean;
}

export interface BackupProgress {
  step: string;
  vm: string;
  host?: string;
  /** The protection server running the backup (its repository keeps the point). */
  server?: string;
  mode?: string;
  kind?: string;
  relocations: number;
  disks: DiskProgress[];
  bytesRead: number;
  bytesSent: number;
  /** bytes read per second over the transfer so far */
  rate: number;
  transferStartedAt?: number;
}

export interface TransferProgressSignal {
  diskId: string;
  position: number;
  bytesRead: number;
  bytesSent: number;
  at: number;
}

export const backupProgressQuery = defineQuery<BackupProgress>('progress');
export const transferProgressSignal = defineSignal<[TransferProgressSignal]>('transferProgress');

export interface ProgressTracker {
  readonly progress: BackupProgress;
  step(name: string): void;
  startDisks(disks: { diskId: string; virtualSize: number }[]): void;
  diskDone(diskId: string, r: { bytesRead: number; bytesSent: number }): void;
}

/** Installs the query and the signal handler; the workflow reports steps and finished disks. */
export function trackProgress(vm: string): ProgressTracker {
  const progress: BackupProgress = { step: 'starting', vm, relocations: 0, disks: [], bytesRead: 0, bytesSent: 0, rate: 0 };
  const summarise = () => {
    progress.bytesRead = progress.disks.reduce((s, d) => s + d.bytesRead, 0);
    progress.bytesSent = progress.disks.reduce((s, d) => s + d.bytesSent, 0);
    const elapsed = progress.transferStartedAt ? (Date.now() - progress.transferStartedAt) / 1000 : 0;
    progress.rate = elapsed > 0 ? Math.round(progress.bytesRead / elapsed) : 0;
    setCurrentDetails(describe(progress));
  };
  setHandler(backupProgressQuery, () => progress);
  setHandler(transferProgressSignal, (p) => {
    const d = progress.disks.find((x) => x.diskId === p.diskId);
    if (!d || d.done) return;
    Object.assign(d, { position: p.position, bytesRead: p.bytesRead, bytesSent: p.bytesSent });
    summarise();
  });
  return {
    progress,
    step(name) {
      progress.step = name;
      setCurrentDetails(describe(progress));
      log.info(`backup step: ${name}`, { vm: progress.vm, host: progress.host });
    },
    startDisks(disks) {
      progress.disks = disks.map((d) => ({ diskId: d.diskId, virtualSize: d.virtualSize, position: 0, bytesRead: 0, bytesSent: 0, done: false }));
      progress.transferStartedAt = Date.now();
    },
    diskDone(diskId, r) {
      const d = progress.disks.find((x) => x.diskId === diskId);
      if (d) Object.assign(d, { position: d.virtualSize, bytesRead: r.bytesRead, bytesSent: r.bytesSent, done: true });
      summarise();
    },
  };
}

function describe(p: BackupProgress): string {
  const lines = [`**${p.step}**`, `VM ${p.vm}${p.host ? ` on ${p.host}` : ''}${p.server ? `, server ${p.server}` : ''}${p.mode ? `, ${p.mode}` : ''}${p.kind ? `, ${p.kind}` : ''}`];
  for (const d of p.disks) {
    const pct = d.virtualSize ? Math.floor((100 * d.position) / d.virtualSize) : 0;
    lines.push(`disk ${d.diskId}: ${d.done ? 'done' : `${pct}%`}, read ${mib(d.bytesRead)}, sent ${mib(d.bytesSent)}`);
  }
  if (p.rate) lines.push(`rate ${mib(p.rate)}/s`);
  if (p.relocations) lines.push(`followed the VM ${p.relocations} time(s)`);
  return lines.join('\n');
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}
