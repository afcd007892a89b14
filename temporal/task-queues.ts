// Task queue names: one per protection server (its workflows and server activities), and one
// per Hyper-V host agent (plus its transfer queue).
const SERVER_ID = /^[a-z0-9][a-z0-9-]{0,31}$/;
const HOST_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function checkServerId(id: string): string {
  if (!SERVER_ID.test(id)) throw new Error(`invalid server id "${id}": lower-case letters, digits and '-', at most 32, e.g. dpm01`);
  return id;
}

/** A protection server's queue: its workflows and the activities that touch its repository. */
export function serverTaskQueue(serverId: string): string {
  return `hvprotect-server-${checkServerId(serverId)}`;
}

export function hostTaskQueue(host: string): string {
  if (!HOST_NAME.test(host)) throw new Error(`invalid host name "${host}": letters, digits, '.', '_' and '-', at most 63`);
  return `hvprotect-host-${host}`;
}

/** Disk transfers of a host: a queue of their own so the per-host limit (DPM: 3) holds. */
export function hostTransferQueue(host: string): string {
  hostTaskQueue(host);
  return `hvprotect-transfer-${host}`;
}
