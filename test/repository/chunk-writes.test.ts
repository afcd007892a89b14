// New chunk files are written by the encoder workers: O_DIRECT where the file system has it
// (ext4 under /tmp), buffered where it refuses it (tmpfs under /dev/shm). Either way every
// chunk file has its exact length, decodes to the bytes sent, and no temp file is left.
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { EncryptionKey, Repository } from '../../repository';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function chunksOfEveryKind(): Buffer[] {
  const text = Buffer.from('hyper-v recovery point chunk text, compressible. ');
  const repeated = (n: number) => {
    const b = Buffer.alloc(n);
    for (let o = 0; o < n; o += text.length) text.copy(b, o);
    return b;
  };
  return [
    randomBytes(256 * 1024), // incompressible: stored raw
    repeated(256 * 1024), // compressible
    randomBytes(1000), // shorter than one 4096-byte block
    repeated(256 * 1024 + 3), // not a multiple of anything
    randomBytes(4096 - 16), // header + payload exactly one block
    Buffer.concat([randomBytes(5000), Buffer.alloc(60_000)]), // partly zero
  ];
}

const places: Array<[string, string]> = [['a disk file system (O_DIRECT)', tmpdir()]];
if (existsSync('/dev/shm')) places.push(['tmpfs (buffered fallback)', '/dev/shm']);

describe.each(places)('chunk files on %s', (_name, parent) => {
  it.each([false, true])('stores every kind of chunk exactly (encrypted: %s)', async (encrypted) => {
    const dir = await mkdtemp(path.join(parent, 'hvp-direct-'));
    const repo = await Repository.open(dir, { create: true, encoderThreads: 2, ...(encrypted ? { encryptionKey: new EncryptionKey(randomBytes(32)) } : {}) });
    try {
      const chunks = chunksOfEveryKind();
      const body = Buffer.concat(chunks);
      let offset = 0;
      const items = chunks.map((c) => {
        const it = { digest: sha(c), offset, length: c.length };
        offset += c.length;
        return it;
      });
      const results = await repo.chunks.insertBatch(body, items);
      expect(results.every((r) => r.written)).toBe(true);
      for (let i = 0; i < chunks.length; i++) {
        const file = path.join(dir, 'chunks', items[i].digest.slice(0, 3), items[i].digest);
        expect((await fs.stat(file)).size).toBe(results[i].storedSize);
        expect((await repo.chunks.read(items[i].digest)).equals(chunks[i])).toBe(true);
      }
      const left: string[] = [];
      for (const sub of await fs.readdir(path.join(dir, 'chunks'))) for (const n of await fs.readdir(path.join(dir, 'chunks', sub))) if (n.includes('.tmp-')) left.push(n);
      expect(left).toEqual([]);
      // The same batch again writes nothing and reports the stored sizes.
      const again = await repo.chunks.insertBatch(Buffer.concat(chunks), items);
      expect(again.map((r) => r.written)).toEqual(chunks.map(() => false));
      expect(again.map((r) => r.storedSize)).toEqual(results.map((r) => r.storedSize));
    } finally {
      await repo.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
