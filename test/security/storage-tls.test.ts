// TLS of the storage API with a CA made here by openssl: an agent trusting the CA uploads and
// restores; a client without the CA is refused with a clear TLS message; with a client CA set, a
// client without a certificate (or with one from another CA) is refused. Plus: a revoked token is
// refused on every kind of route (upload, read, admin).
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Repository } from '../../repository';
import { StorageApiError, StorageClient, TokenStore, loadClientTls, loadServerTls, startStorageApi } from '../../storage-api';
import type { StorageApi, StorageClientTls } from '../../storage-api';
import { makePki, type Pki } from './pki';
import { readAll } from '../storage-api/support';

const CS = 64 * 1024;

interface Env {
  dir: string;
  repo: Repository;
  tokens: TokenStore;
  api: StorageApi;
  agentToken: string;
  adminToken: string;
  close(): Promise<void>;
}

async function start(pki: Pki | undefined, clientCa: boolean): Promise<Env> {
  const dir = await mkdtemp(path.join(tmpdir(), 'hvp-tls-'));
  const repo = await Repository.open(path.join(dir, 'repo'), { create: true, unsafeSkipSync: true, encoderThreads: 0, createChunkFolders: false, defaultChunkSize: CS });
  const tokens = await TokenStore.open(path.join(dir, 'tokens.json'));
  const agentToken = await tokens.issue('hv01', 'agent');
  const adminToken = await tokens.issue('admin', 'admin');
  const tls = pki ? loadServerTls({ certFile: pki.serverCert, keyFile: pki.serverKey, clientCaFile: clientCa ? pki.caCert : undefined }) : undefined;
  const api = await startStorageApi({ repository: repo, tokens, host: '127.0.0.1', port: 0, tls });
  return {
    dir, repo, tokens, api, agentToken, adminToken,
    close: async () => {
      await api.close();
      await repo.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * One small backup through the API and its restore, as the server runs them: its own steps
 * (session, commit, lease) in process, the agent's under the job grants it mints; returns the
 * restored bytes.
 */
async function backupAndRestore(env: Env, agent: StorageClient, disk: Buffer): Promise<Buffer> {
  const session = await env.repo.beginSession('vm1', { chunkSize: CS });
  const client = agent.withGrant(env.api.grants.forSession({ job: 'tls-test', dataSource: 'vm1', sessionId: session.sessionId, basePoint: session.basePoint ?? null, disks: [{ diskId: 'disk0', virtualSize: disk.length }] }));
  const chunks = [];
  const digests = Buffer.alloc((disk.length / CS) * 32);
  for (let i = 0; i < disk.length / CS; i++) {
    const data = disk.subarray(i * CS, (i + 1) * CS);
    const d = createHash('sha256').update(data).digest();
    d.copy(digests, i * 32);
    chunks.push({ digest: d.toString('hex'), data });
  }
  await client.putChunks(chunks);
  await client.putFullIndex(session.sessionId, 'disk0', disk.length, digests);
  const m = await env.repo.commitPoint(session.sessionId, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'disk0', fileName: 'disk0.vhdx', virtualSize: disk.length }] });
  const lease = await env.repo.beginRestore('vm1', m.pointId);
  const reader = agent.withGrant(env.api.grants.forRestore({ job: 'tls-test', dataSource: 'vm1', pointId: m.pointId, leaseId: lease.leaseId, expiresAt: lease.expiresAt }));
  return readAll(await reader.openDiskStream({ dataSource: 'vm1', pointId: m.pointId }, 'disk0'));
}

async function refusal(p: Promise<unknown>): Promise<Error & { code?: string; status?: number }> {
  try {
    await p;
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a refusal');
}

function disk(seed: number): Buffer {
  const b = Buffer.alloc(4 * CS);
  for (let i = 0; i < b.length; i++) b[i] = (i * seed + (i >> 10)) & 0xff;
  return b;
}

describe('storage API over TLS (self-made CA)', () => {
  let pki: Pki;
  let pkiDir: string;
  beforeAll(async () => {
    pkiDir = await mkdtemp(path.join(tmpdir(), 'hvp-pki-'));
    pki = makePki(pkiDir);
  });
  afterAll(async () => rm(pkiDir, { recursive: true, force: true }));

  describe('server certificate only', () => {
    let env: Env;
    beforeAll(async () => {
      env = await start(pki, false);
    });
    afterAll(async () => env.close());

    it('serves https; an agent trusting the CA uploads and restores', async () => {
      expect(env.api.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      const agent = new StorageClient(env.api.url, env.agentToken, loadClientTls({ caFile: pki.caCert }));
      try {
        const d = disk(7);
        expect((await backupAndRestore(env, agent, d)).equals(d)).toBe(true);
      } finally {
        agent.close();
      }
    });

    it('refuses a client without the CA, or trusting another CA, with a clear TLS message', async () => {
      for (const tls of [undefined, loadClientTls({ caFile: pki.otherCaCert })] as Array<StorageClientTls | undefined>) {
        const c = new StorageClient(env.api.url, env.agentToken, tls);
        const err = await refusal(c.listPoints('vm1'));
        c.close();
        expect(err).not.toBeInstanceOf(StorageApiError);
        expect(err.message).toMatch(/TLS connection to the storage API at https:\/\/127\.0\.0\.1:\d+ refused: its certificate is not signed by a CA this client trusts .*--storage-ca/);
      }
    });

    it('plain http to the https port fails (no silent downgrade)', async () => {
      const c = new StorageClient(env.api.url.replace('https:', 'http:'), env.agentToken);
      const err = await refusal(c.listPoints('vm1'));
      c.close();
      expect(err).toBeTruthy();
    });
  });

  describe('mutual TLS (--api-tls-client-ca)', () => {
    let env: Env;
    beforeAll(async () => {
      env = await start(pki, true);
    });
    afterAll(async () => env.close());

    it('an agent with a client certificate from the CA uploads and restores', async () => {
      const agent = new StorageClient(env.api.url, env.agentToken, loadClientTls({ caFile: pki.caCert, certFile: pki.clientCert, keyFile: pki.clientKey }));
      try {
        const d = disk(11);
        expect((await backupAndRestore(env, agent, d)).equals(d)).toBe(true);
      } finally {
        agent.close();
      }
    });

    it('refuses a client without a certificate, and one with a certificate from another CA', async () => {
      const none = new StorageClient(env.api.url, env.agentToken, loadClientTls({ caFile: pki.caCert }));
      const e1 = await refusal(none.listPoints('vm1'));
      none.close();
      expect(e1).not.toBeInstanceOf(StorageApiError);
      expect(e1.message).toMatch(/TLS connection to the storage API .* refused: .*(requires a client certificate|without a certificate signed by its client CA).*--storage-cert/);
      const rogue = new StorageClient(env.api.url, env.agentToken, loadClientTls({ caFile: pki.caCert, certFile: pki.rogueClientCert, keyFile: pki.rogueClientKey }));
      const e2 = await refusal(rogue.listPoints('vm1'));
      rogue.close();
      expect(e2).not.toBeInstanceOf(StorageApiError);
      expect(e2.message).toMatch(/TLS connection to the storage API .* refused: .*(requires a client certificate|without a certificate signed by its client CA).*--storage-cert/);
    });
  });

  it('refuses to load TLS files that are missing or not PEM, naming the flag', () => {
    expect(() => loadServerTls({ certFile: pki.serverCert })).toThrow(/both --api-tls-cert and --api-tls-key/);
    expect(() => loadClientTls({ caFile: path.join(pkiDir, 'nope.crt') })).toThrow(/cannot read the CA bundle .*--storage-ca/);
    expect(() => loadClientTls({ caFile: path.join(pkiDir, 'server.ext') })).toThrow(/not a PEM file/);
    expect(() => loadClientTls({ certFile: pki.clientCert })).toThrow(/both --storage-cert and --storage-key/);
  });
});

describe('a revoked agent token', () => {
  let env: Env;
  beforeAll(async () => {
    env = await start(undefined, false);
  });
  afterAll(async () => env.close());

  it('is refused (401) on every route kind: upload, read, session, admin', async () => {
    const admin = new StorageClient(env.api.url, env.adminToken);
    const token = await admin.issueToken('hv09');
    const agent = new StorageClient(env.api.url, token);
    const d = disk(3);
    await backupAndRestore(env, agent, d);
    const [point] = await admin.listPoints('vm1');
    const chunk = d.subarray(0, CS);
    const digest = createHash('sha256').update(chunk).digest('hex');
    await admin.revokeToken('hv09');

    const calls: Array<[string, () => Promise<unknown>]> = [
      ['upload one chunk', () => agent.putChunk(digest, chunk)],
      ['upload a batch', () => agent.putChunks([{ digest, data: chunk }])],
      ['missing chunks', () => agent.missingChunks([digest])],
      ['read a chunk', () => agent.getChunk(digest)],
      ['begin a session', () => agent.beginSession('vm1')],
      ['list points', () => agent.listPoints('vm1')],
      ['read a point', () => agent.getPoint(point)],
      ['read an index', () => agent.getIndex(point, 'disk0')],
      ['restore stream', () => agent.openDiskStream(point, 'disk0')],
      ['restore lease', () => agent.beginRestore(point)],
      ['admin: gc', () => agent.collectGarbage()],
      ['admin: issue token', () => agent.issueToken('evil', 'admin')],
      ['admin: verify', () => agent.verify()],
      ['admin: shadow storage', () => agent.listShadowStorage()],
    ];
    for (const [what, call] of calls) {
      const err = await refusal(call());
      expect([what, err instanceof StorageApiError ? err.status : err.message]).toEqual([what, 401]);
      expect([what, (err as StorageApiError).code]).toEqual([what, 'UNAUTHENTICATED']);
    }
    // The admin still works; the revoked name no longer in the store.
    expect(await admin.listPoints('vm1')).toHaveLength(1);
    agent.close();
    admin.close();
  });
});
