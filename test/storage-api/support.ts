// Shared fixtures: a repository in a temp folder, an API server on a free port, tokens.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Repository } from '../../repository';
import type { OpenRepositoryOptions } from '../../repository';
import { StorageClient, TokenStore, startStorageApi } from '../../storage-api';
import type { StorageApi } from '../../storage-api';
import type { StorageApiBounds } from '../../storage-api/bounds';
import { prng } from '../support/prng';

export interface Fixture {
  dir: string;
  repo: Repository;
  api: StorageApi;
  tokens: TokenStore;
  agentToken: string;
  adminToken: string;
  agent: StorageClient;
  admin: StorageClient;
  close(): Promise<void>;
}

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
  return {
    dir, repo, api, tokens, agentToken, adminToken,
    agent: new StorageClient(api.url, agentToken),
    admin: new StorageClient(api.url, adminToken),
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
