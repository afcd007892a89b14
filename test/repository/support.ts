// In-process helpers: back up a disk held in a Buffer straight into a Repository.
import { createHash } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Repository, isAllZero } from '../../repository';
import type { OpenRepositoryOptions, RecoveryPointManifest } from '../../repository';

export async function tempRepo(opts: OpenRepositoryOptions = {}): Promise<Repository> {
  const dir = await mkdtemp(path.join(tmpdir(), 'hvp-repo-'));
  return Repository.open(dir, { create: true, unsafeSkipSync: true, defaultChunkSize: 64 * 1024, encoderThreads: 0, createChunkFolders: false, ...opts });
}

export function digestOf(chunk: Buffer): Buffer {
  return isAllZero(chunk) ? Buffer.alloc(32) : createHash('sha256').update(chunk).digest();
}

/**
 * Backs up `disk`; with `base`, only the slots in `changedSlots` (default: all) are sent.
 * Returns the committed manifest.
 */
export async function backup(
  repo: Repository,
  ds: string,
  disk: Buffer,
  opts: { base?: string; changedSlots?: number[]; createdAt?: string; diskId?: string; beforeCommit?: () => Promise<void> } = {},
): Promise<RecoveryPointManifest> {
  const session = await repo.beginSession(ds, { basePoint: opts.base });
  const cs = session.chunkSize;
  const count = Math.ceil(disk.length / cs);
  const slots = opts.changedSlots ?? Array.from({ length: count }, (_, i) => i);
  const digests = Buffer.alloc(slots.length * 32);
  for (let i = 0; i < slots.length; i++) {
    const chunk = disk.subarray(slots[i] * cs, Math.min(disk.length, (slots[i] + 1) * cs));
    const d = digestOf(chunk);
    d.copy(digests, i * 32);
    // insertBatch is the storage API's path (worker threads when the repository has them).
    if (!isAllZero(chunk)) await repo.chunks.insertBatch(Buffer.from(chunk), [{ digest: d.toString('hex'), offset: 0, length: chunk.length }]);
  }
  const diskId = opts.diskId ?? 'disk0';
  await repo.patchIndex(session.sessionId, diskId, { virtualSize: disk.length }, slots, digests);
  await opts.beforeCommit?.();
  return repo.commitPoint(session.sessionId, {
    kind: opts.base ? 'express-full' : 'initial-replica',
    mode: 'online',
    createdAt: opts.createdAt,
    disks: [{ diskId, fileName: `${diskId}.vhdx`, virtualSize: disk.length }],
    vm: { name: ds },
  });
}

export async function restore(repo: Repository, ds: string, pointId: string, diskId = 'disk0', range?: { offset: number; length?: number }): Promise<Buffer> {
  const { openDiskStream } = await import('../../recovery');
  const { stream } = await openDiskStream(repo, ds, pointId, diskId, range);
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

export function randomDisk(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4096) {
    x = (x * 1103515245 + 12345) >>> 0;
    const kind = x % 3;
    if (kind === 0) continue; // zero page
    for (let j = i; j < Math.min(size, i + 4096); j++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      b[j] = kind === 1 ? x & 0xff : 97 + (x % 26);
    }
  }
  return b;
}
