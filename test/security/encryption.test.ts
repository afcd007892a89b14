// Encryption at rest: a repository copied without the key reveals nothing of the disk contents;
// with the key every restore is bit for bit; a wrong or missing key is refused; a changed byte in
// a sealed chunk fails the GCM tag (verify --read-data); GC and old unencrypted chunks keep working.
import { promises as fs } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { EncryptionKey, Repository, collectGarbage, verifyRepository } from '../../repository';
import { ENCRYPTED_FLAG } from '../../repository/codec';
import { backup, digestOf, restore } from '../repository/support';

const CS = 64 * 1024;
const PATTERN = 'HVPROTECT-PLAINTEXT-MARKER-7f3a';

/**
 * A disk of recognisable text (the marker on every line; stored compressed), chunks of random
 * bytes holding the marker once (incompressible: stored as they are), and all-zero chunks.
 */
function textDisk(chunks: number, seed: number): Buffer {
  const b = Buffer.alloc(chunks * CS);
  let x = seed;
  for (let c = 0; c < chunks; c++) {
    if (c % 5 === 4) continue; // an all-zero chunk now and then
    if (c % 3 === 2) {
      for (let i = c * CS; i < (c + 1) * CS; i++) {
        x = (x * 1103515245 + 12345) >>> 0;
        b[i] = x >>> 24;
      }
      b.write(PATTERN, c * CS + 1000, 'latin1');
      continue;
    }
    let off = c * CS;
    let line = 0;
    while (off < (c + 1) * CS) {
      x = (x * 1103515245 + 12345) >>> 0;
      off += b.write(`${PATTERN} chunk ${c} line ${line++} value ${x.toString(16)}\n`, off, 'latin1');
    }
  }
  return b;
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const ent of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, ent.name);
    if (ent.isDirectory()) out.push(...(await filesUnder(p)));
    else if (ent.isFile()) out.push(p);
  }
  return out;
}

/** Like `grep -r`: the files holding the needle (the full marker or its first 12 bytes). */
async function grepRepo(dir: string): Promise<string[]> {
  const hits: string[] = [];
  for (const f of await filesUnder(dir)) {
    const data = await fs.readFile(f);
    if (data.includes(Buffer.from(PATTERN, 'latin1')) || data.includes(Buffer.from(PATTERN.slice(0, 12), 'latin1'))) hits.push(f);
  }
  return hits;
}

async function openRepo(dir: string, key: EncryptionKey | undefined, threads: number): Promise<Repository> {
  return Repository.open(dir, { create: true, unsafeSkipSync: true, defaultChunkSize: CS, encoderThreads: threads, createChunkFolders: false, encryptionKey: key });
}

describe.each([0, 2])('encryption at rest (encoder threads: %i)', (threads) => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'hvp-enc-'));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('without encryption the marker is in the chunk files (the control)', async () => {
    const repo = await openRepo(dir, undefined, threads);
    await backup(repo, 'vm', textDisk(6, 1));
    await repo.close();
    expect((await grepRepo(dir)).length).toBeGreaterThan(0);
  });

  it('a copy without the key reveals nothing; with the key restores bit for bit; wrong or no key refused', async () => {
    const { key, file } = EncryptionKey.generate();
    const keyFile = path.join(dir, '..', `${path.basename(dir)}.key`);
    await fs.writeFile(keyFile, file, { mode: 0o600 });
    const disk = textDisk(12, 2);
    let repo = await openRepo(dir, key, threads);
    const m1 = await backup(repo, 'vm', disk);
    disk.write(`${PATTERN} changed`, 3 * CS + 100, 'latin1');
    const m2 = await backup(repo, 'vm', disk, { base: m1.pointId, changedSlots: [3] });
    await repo.close();

    // The config records the encryption and the key fingerprint, never the key.
    const config = JSON.parse(await fs.readFile(path.join(dir, 'config'), 'utf8')) as { encryption?: { algorithm: string; keyFingerprint: string } };
    expect(config.encryption).toEqual({ algorithm: 'aes-256-gcm', keyFingerprint: key.fingerprint });
    expect(await fs.readFile(path.join(dir, 'config'), 'utf8')).not.toContain(JSON.parse(file).key);

    // Every file of the repository folder: no marker anywhere.
    const chunkFiles = (await filesUnder(path.join(dir, 'chunks'))).filter((f) => /[0-9a-f]{64}$/.test(f));
    expect(chunkFiles.length).toBeGreaterThan(5);
    for (const f of chunkFiles) expect((await fs.readFile(f))[4] & ENCRYPTED_FLAG).toBe(ENCRYPTED_FLAG);
    expect(await grepRepo(dir)).toEqual([]);

    // Wrong key, missing key: refused with a clear message.
    await expect(openRepo(dir, EncryptionKey.generate().key, threads)).rejects.toThrow(/wrong encryption key/);
    await expect(openRepo(dir, undefined, threads)).rejects.toThrow(/is encrypted .* no key was given/);

    // The right key, loaded from the key file: bit for bit.
    repo = await openRepo(dir, await EncryptionKey.load(keyFile), threads);
    try {
      expect((await restore(repo, 'vm', m2.pointId)).equals(disk)).toBe(true);
      expect((await verifyRepository(repo, { readData: true })).ok).toBe(true);

      // GC after deleting the first point: the second still restores and verifies.
      await repo.deletePoint('vm', m1.pointId);
      const gc = await collectGarbage(repo, { graceMs: -60_000 });
      expect(gc.removedChunks).toBeGreaterThan(0);
      expect((await restore(repo, 'vm', m2.pointId)).equals(disk)).toBe(true);

      // A flipped byte inside a sealed chunk fails the GCM tag: verify --read-data reports it.
      const victim = digestOf(disk.subarray(1 * CS, 2 * CS)).toString('hex');
      const cf = await fs.readFile(repo.chunks.pathOf(victim));
      cf[40] ^= 0x01;
      await fs.writeFile(repo.chunks.pathOf(victim), cf);
      const report = await verifyRepository(repo, { readData: true });
      expect(report.ok).toBe(false);
      expect(report.damagedChunks).toEqual([expect.objectContaining({ digest: victim, problem: 'corrupt', detail: expect.stringMatching(/authentication failed/) })]);
      await expect(restore(repo, 'vm', m2.pointId)).rejects.toMatchObject({ code: 'CORRUPT' });
    } finally {
      await repo.close();
      await fs.rm(keyFile, { force: true });
    }
  });

  it('switching encryption on keeps reading the chunks stored before, and seals new ones', async () => {
    let repo = await openRepo(dir, undefined, threads);
    const old = textDisk(4, 3);
    const m1 = await backup(repo, 'old', old);
    await repo.close();
    const { key } = EncryptionKey.generate();
    repo = await openRepo(dir, key, threads);
    try {
      const fresh = textDisk(4, 4);
      const m2 = await backup(repo, 'new', fresh);
      expect((await restore(repo, 'old', m1.pointId)).equals(old)).toBe(true);
      expect((await restore(repo, 'new', m2.pointId)).equals(fresh)).toBe(true);
      const sealed = await fs.readFile(repo.chunks.pathOf(digestOf(fresh.subarray(0, CS)).toString('hex')));
      expect(sealed[4] & ENCRYPTED_FLAG).toBe(ENCRYPTED_FLAG);
      expect((await verifyRepository(repo, { readData: true })).ok).toBe(true);
    } finally {
      await repo.close();
    }
    await expect(openRepo(dir, undefined, threads)).rejects.toThrow(/no key was given/);
  });

  it('a sealed chunk moved under another name fails authentication', async () => {
    const { key } = EncryptionKey.generate();
    const repo = await openRepo(dir, key, threads);
    try {
      const disk = textDisk(2, 5);
      const m = await backup(repo, 'vm', disk);
      const a = digestOf(disk.subarray(0, CS)).toString('hex');
      const b = digestOf(disk.subarray(CS, 2 * CS)).toString('hex');
      await fs.copyFile(repo.chunks.pathOf(a), repo.chunks.pathOf(b));
      await expect(restore(repo, 'vm', m.pointId)).rejects.toMatchObject({ code: 'CORRUPT' });
    } finally {
      await repo.close();
    }
  });
});
