// Shared fixtures: a repository in a temp folder, an API server on a free port, tokens.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Repository } from '../../repository';
import type { OpenRepositoryOptions } from '../../repository';
import { StorageClient, TokenStore, startStorageApi } from '../../storage-api';
import type { GrantAuthority, PointRef, StorageApi } from '../../storage-api';
import type { BackupSession } from '../../repository';
import type { StorageApiBounds } from '../../storage-api/bounds';
import { prng } from '../support/prng';

export interface Fixture {
  dir: string;
  repo: Repository;
  api: StorageApi;
  tokens: TokenStore;
  agentToken: string;
  adminToken: string;
  /** hv-host-01's agent token and nothing else: no job grant. */
  agent: StorageClient;
  admin: StorageClient;
  /** What the protection server's workflow steps do in process: mint job grants. */
  grants: GrantAuthority;
  /**
   * A backup job as the server runs it: the session opened by the server (here over the admin
   * token), and the agent's client under that job's grant (disks: id → virtual size the host reported).
   */
  backupJob(ds: string, opts?: { basePoint?: string; chunkSize?: number }, disks?: Record<string, number>): Promise<{ session: BackupSession; agent: StorageClient; grant: string }>;
  /** A restore job of one point: the server's lease on it, and the agent's client under its grant. */
  restoreJob(point: PointRef): Promise<{ agent: StorageClient; grant: string }>;
  close(): Promise<void>;
}

/** Disk ids and sizes a backup grant covers unless a test names its own. */
export const DEFAULT_GRANT_DISKS: Record<string, number> = { disk0: 2 ** 30, d: 2 ** 30 };

export async function tempDir(prefix = 'hvp-repo-'): Promise<string> {
  return mkdtemp(path.join(tmpdir(), prefix));
}

export async function startFixture(opts: OpenRepositoryOptions = {}, server: { bounds?: StorageApiBounds } = {}): Promise<Fixture> {
  const dir = await tempDir();
  const repo = await Repository.open(dir, { create: true, unsafeSkipSync: true, ...opts });
  const tokens = await TokenStore.open(path.join(dir, 'tokens.json'));
  const agentToken = await tokens.issue('hv-host-01', 'agent');
  const adminToken = await tokens.issue('admin', 'admin');
  const api = await startStorageApi({ repository: repo, tokens, host: '127.0.0.1', port: 0, bounds: server.bounds });
  const agent = new StorageClient(api.url, agentToken);
  const admin = new StorageClient(api.url, adminToken);
  return {
    dir, repo, api, tokens, agentToken, adminToken, agent, admin,
    grants: api.grants,
    backupJob: async (ds, o = {}, disks = DEFAULT_GRANT_DISKS) => {
      const session = await admin.beginSession(ds, o);
      const grant = api.grants.forSession({
        job: `test-backup-${session.sessionId}`, dataSource: ds, sessionId: session.sessionId, basePoint: session.basePoint ?? null,
        disks: Object.entries(disks).map(([diskId, virtualSize]) => ({ diskId, virtualSize })),
      });
      return { session, agent: agent.withGrant(grant), grant };
    },
    restoreJob: async (point) => {
      const lease = await repo.beginRestore(point.dataSource, point.pointId);
      const grant = api.grants.forRestore({ job: `test-restore-${lease.leaseId}`, dataSource: point.dataSource, pointId: point.pointId, leaseId: lease.leaseId, expiresAt: lease.expiresAt });
      return { agent: agent.withGrant(grant), grant };
    },
    close: async () => {
      await api.close();
      await repo.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A disk image with random, zero and repeated-text regions, deterministic per seed. */
export function makeDisk(size: number, seed = 1): Buffer {
  const buf = Buffer.alloc(size);
  const rnd = prng(seed);
  const text = Buffer.from('hyper-v virtual machine backup chunk text ');
  for (let off = 0; off < size; off += 65536) {
    const kind = rnd() % 3;
    const end = Math.min(size, off + 65536);
    if (kind === 0) for (let i = off; i < end; i++) buf[i] = rnd() & 0xff;
    else if (kind === 1) for (let i = off; i < end; i++) buf[i] = text[i % text.length];
  }
  return buf;
}

export async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(Buffer.from(c as Buffer));
  return Buffer.concat(parts);
}
