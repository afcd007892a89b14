// Task queue names: the protection server's, and one per Hyper-V host agent.
export const SERVER_TASK_QUEUE = 'hvprotect-server';

const HOST_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function hostTaskQueue(host: string): string {
  if (!HOST_NAME.test(host)) throw new Error(`invalid host name "${host}": letters, digits, '.', '_' and '-', at most 63`);
  return `hvprotect-host-${host}`;
}

/** Disk transfers of a host: a queue of their own so the per-host limit (DPM: 3) holds. */
export function hostTransferQueue(host: string): string {
  hostTaskQueue(host);
  return `hvprotect-transfer-${host}`;
}
