// Every workflow the protection server runs. Deterministic code only: no I/O here.
export * from './self-check';
export * from './backup-vm';
export * from './restore-vm';
export * from './find-vm';
export * from './protection';
export * from './protection-server';
export * from './recovery-points';
export * from './protection-group';
