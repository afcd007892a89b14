import { promises as fs } from 'node:fs';
import { verifyRepository } from '../../repository';
import { INDEX_HEADER_SIZE } from '../../repository/fixed-index';
import { CHUNK_HEADER_SIZE } from '../../repository/chunk-store';
import { CODEC_NONE } from '../../repository/codec';
import { prng } from '../support/prng';
import type { Repository } from '../../repository';
import { backup, digestOf, randomDisk, restore, tempRepo } from './support';

const CS = 64 * 1024;

describe('verify (the checker)', () => {
  let repo: Repository;
  beforeEach(async () => {
    repo = await tempRepo();
  });
  afterEach(async () => {
    await repo.close();
    await fs.rm(repo.root, { recursive: true, force: true });
  });

  it('reports a missing chunk, a corrupt chunk and a damaged index, and the points they touch', async () => {
    const disk = randomDisk(8 * CS, 5);
    const m1 = await backup(repo, 'vm', disk);
    disk.fill(3, 0, 10);
    const m2 = await backup(repo, 'vm', disk, { base: m1.pointId, changedSlots: [0] });
    const other = await backup(repo, 'other', randomDisk(4 * CS, 6));
    expect((await verifyRepository(repo, { readData: true })).ok).toBe(true);

    // slot 3 is shared by both points of vm: delete its chunk
    const shared = digestOf(disk.subarray(3 * CS, 4 * CS)).toString('hex');
    await fs.rm(repo.chunks.pathOf(shared));
    // slot 5: flip a byte inside the stored payload (only readData notices)
    const flipped = digestOf(disk.subarray(5 * CS, 6 * CS)).toString('hex');
    const file = await fs.readFile(repo.chunks.pathOf(flipped));
    file[file.length - 1] ^= 0xff;
    await fs.writeFile(repo.chunks.pathOf(flipped), file);
    // the other data source's index: flip one digest byte
    const idx = repo.indexPath('other', other.pointId, 'disk0');
    const ib = await fs.readFile(idx);
    ib[INDEX_HEADER_SIZE + 5] ^= 1;
    await fs.writeFile(idx, ib);

    const quick = await verifyRepository(repo);
    expect(quick.ok).toBe(false);
    expect(quick.damagedChunks.map((d) => [d.digest, d.problem])).toEqual([[shared, 'missing']]);
    expect(quick.damagedIndexes).toEqual([expect.objectContaining({ dataSource: 'other', pointId: other.pointId, diskId: 'disk0', problem: expect.stringMatching(/checksum/) })]);

    const full = await verifyRepository(repo, { readData: true });
    expect(full.damagedChunks.map((d) => d.digest).sort()).toEqual([shared, flipped].sort());
    expect(full.damagedChunks.find((d) => d.digest === flipped)?.problem).toBe('corrupt');
    const affected = full.affectedPoints.map((a) => `${a.dataSource}/${a.pointId}`).sort();
    expect(affected).toEqual([`other/${other.pointId}`, `vm/${m1.pointId}`, `vm/${m2.pointId}`].sort());
    expect(full.affectedPoints.find((a) => a.pointId === m2.pointId)?.damagedChunks).toBe(2);

    // restore refuses to hand out damaged bytes
    await expect(restore(repo, 'vm', m2.pointId)).rejects.toMatchObject({ code: expect.stringMatching(/NOT_FOUND|CORRUPT/) });
    await expect(restore(repo, 'vm', m2.pointId, 'disk0', { offset: 5 * CS, length: 10 })).rejects.toMatchObject({ code: 'CORRUPT' });
    await expect(restore(repo, 'other', other.pointId)).rejects.toMatchObject({ code: 'CORRUPT' });
    // the undamaged range still restores
    expect((await restore(repo, 'vm', m2.pointId, 'disk0', { offset: 0, length: 2 * CS })).equals(disk.subarray(0, 2 * CS))).toBe(true);
  });

  it('a raw (incompressible) chunk with one flipped byte is refused with CORRUPT by the restore reader', async () => {
    // Random bytes do not compress, so the chunk is stored raw: no zstd frame check can catch
    // the flip, only the SHA-256 of the content against the chunk's name.
    const next = prng(17);
    const disk = Buffer.alloc(4 * CS);
    for (let i = 0; i < disk.length; i += 4) disk.writeUInt32LE(next(), i);
    const m = await backup(repo, 'vm', disk);
    const digest = digestOf(disk.subarray(2 * CS, 3 * CS)).toString('hex');
    const file = await fs.readFile(repo.chunks.pathOf(digest));
    expect(file.readUInt8(4)).toBe(CODEC_NONE);
    file[CHUNK_HEADER_SIZE + 1000] ^= 0x01;
    await fs.writeFile(repo.chunks.pathOf(digest), file);

    await expect(restore(repo, 'vm', m.pointId)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/SHA-256/) });
    await expect(restore(repo, 'vm', m.pointId, 'disk0', { offset: 2 * CS + 5, length: 10 })).rejects.toMatchObject({ code: 'CORRUPT' });
    const report = await verifyRepository(repo, { readData: true });
    expect(report.damagedChunks.map((d) => [d.digest, d.problem])).toEqual([[digest, 'corrupt']]);
    // the chunks around it still restore, bit for bit
    expect((await restore(repo, 'vm', m.pointId, 'disk0', { offset: 0, length: 2 * CS })).equals(disk.subarray(0, 2 * CS))).toBe(true);
  });
});
