// Crash points for the fault matrix: a process started with HVPROTECT_CRASH_AT=<name> kills
// itself with SIGKILL when it reaches that point, the way a power cut or `kill -9` would, so a
// test can prove a backup recovers from a crash at exactly that step. Costs one env lookup.
// 'lab:checkpoint-quiesced' fires in the lab adapter (inside the agent) with an offline VM paused or
// saved for its checkpoint, the checkpoint labelled, and no differencing disk recorded yet.
export type CrashPointName =
  | 'lab:checkpoint-quiesced'
  | 'agent:after-checkpoint'
  | 'agent:mid-transfer'
  | 'agent:before-release'
  | 'agent:after-release'
  | 'server:after-plan'
  | 'server:before-commit'
  | 'server:after-commit';

export function crashPoint(name: CrashPointName): void {
  if (process.env.HVPROTECT_CRASH_AT === name) {
    process.stderr.write(`crash point ${name}: SIGKILL\n`);
    process.kill(process.pid, 'SIGKILL');
  }
}
