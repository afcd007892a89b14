// Where the CLI finds the protection server's storage API and its admin token: flags, then
// HVPROTECT_STORAGE_URL / HVPROTECT_ADMIN_TOKEN, then the server's state folder
// (--server-dir, $HVPROTECT_SERVER_DIR, .hvprotect/dev/server when `npm start` runs, else .hvprotect/server).
import fs from 'node:fs';
import path from 'node:path';
import { StorageClient } from '../storage-api/client';
import { loadClientTls } from '../storage-api/tls';
import { UsageError } from './errors';

export interface AdminOptions {
  serverDir?: string;
  storageUrl?: string;
  adminTokenFile?: string;
  /** CA bundle for an https:// storage API (default $HVPROTECT_STORAGE_CA). */
  storageCa?: string;
  /** Client certificate and key when the server requires them (default $HVPROTECT_STORAGE_CERT / _KEY). */
  storageCert?: string;
  storageKey?: string;
}

export function serverDir(o: AdminOptions): string {
  if (o.serverDir) return path.resolve(o.serverDir);
  if (process.env.HVPROTECT_SERVER_DIR) return path.resolve(process.env.HVPROTECT_SERVER_DIR);
  const dev = path.resolve('.hvprotect/dev/server');
  return fs.existsSync(dev) ? dev : path.resolve('.hvprotect/server');
}

function readFirstLine(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n')[0] || undefined;
  } catch {
    return undefined;
  }
}

export function adminStorage(o: AdminOptions): StorageClient {
  const dir = serverDir(o);
  const url = o.storageUrl ?? process.env.HVPROTECT_STORAGE_URL ?? readFirstLine(path.join(dir, 'storage-api.url'));
  if (!url) {
    throw new UsageError(`cannot tell where the storage API is: pass --storage-url, set HVPROTECT_STORAGE_URL, or --server-dir pointing at the server's state folder (tried ${dir})`);
  }
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  if (!parsed || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) {
    throw new UsageError(`storage API address ${JSON.stringify(url.slice(0, 200))} is not an http:// or https:// URL (e.g. --storage-url http://dpm01:8780)`);
  }
  const tokenFile = o.adminTokenFile ?? path.join(dir, 'admin.token');
  const token = process.env.HVPROTECT_ADMIN_TOKEN ?? readFirstLine(tokenFile);
  if (!token) {
    throw new UsageError(`no admin token: set HVPROTECT_ADMIN_TOKEN or --admin-token-file (tried ${tokenFile}, written by \`hvprotect server\`)`);
  }
  let tls;
  try {
    tls = loadClientTls({
      caFile: o.storageCa ?? (process.env.HVPROTECT_STORAGE_CA || undefined),
      certFile: o.storageCert ?? (process.env.HVPROTECT_STORAGE_CERT || undefined),
      keyFile: o.storageKey ?? (process.env.HVPROTECT_STORAGE_KEY || undefined),
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  return new StorageClient(url, token, tls);
}
