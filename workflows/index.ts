// Every workflow the protection server runs. Deterministic code only: no I/O here.
export * from './self-check';
export * from './backup-vm';
export * from './restore-vm';
export * from './find-vm';
