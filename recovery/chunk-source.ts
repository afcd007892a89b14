// Where a recovery point's chunks come from: the repository in this process (the protection
// server) or the storage API over HTTP (a host agent, the CLI). The reader does not care which
// (as restic's BlobLoader and PBS's ReadChunk); it checks what a source hands it.
import { promises as fs } from 'node:fs';
import { RepositoryError } from '../repository/errors';
import { INDEX_HEADER_SIZE, checkIndex } from '../repository/fixed-index';
import type { Repository } from '../repository/repository';
import type { PointRef, StorageClient } from '../storage-api/client';
import { decodeChunkRecords } from './chunk-decoder';

/** A point's disk as its fixed index describes it. */
export interface PointDiskIndex {
  virtualSize: number;
  chunkSize: number;
  /** 32 bytes per slot, in disk order; 32 zero bytes for an all-zero chunk. */
  slots: Buffer;
}

export interface ChunkSource {
  /** Names the disk in messages: `<dataSource>/<pointId>/<diskId>`. */
  readonly where: string;
  /**
   * True when every chunk handed out has already been hashed against its digest by the source
   * (the repository's chunk store decodes and hashes every chunk it reads); the reader then does
   * not hash a second time. False: the reader hashes.
   */
  readonly checksDigests: boolean;
  /** The disk's index, its checksum and its agreement with the manifest already checked. */
  readIndex(): Promise<PointDiskIndex>;
  /** A chunk's plaintext by its SHA-256 (lowercase hex). */
  readChunk(digest: string): Promise<Buffer>;
  /**
   * Many chunks at once, in order, each already hashed against its digest (whatever
   * `checksDigests` says of readChunk); whole-disk reads use it where the source has it.
   */
  readChunks?(digests: string[]): Promise<Buffer[]>;
  /** How many chunks readChunks takes at once. */
  readonly batchChunks?: number;
}

/** Chunks straight from a repository open in this process. */
export function repositoryChunkSource(repo: Repository, dataSource: string, pointId: string, diskId: string): ChunkSource {
  const where = `${dataSource}/${pointId}/${diskId}`;
  return {
    where,
    checksDigests: true,
    async readIndex() {
      const point = await repo.getPoint(dataSource, pointId);
      const disk = point.disks.find((d) => d.diskId === diskId);
      if (!disk) throw new RepositoryError('NOT_FOUND', `recovery point ${dataSource}/${pointId} has no disk ${diskId}`, `its disks: ${point.disks.map((d) => d.diskId).join(', ')}`);
      const file = repo.indexPath(dataSource, pointId, diskId);
      const { header, ok, actual } = await checkIndex(file);
      if (!ok || actual !== disk.indexDigest) {
        throw new RepositoryError('CORRUPT', `index of ${where} fails its checksum`, 'restore from another recovery point; run verify');
      }
      if (header.virtualSize !== disk.virtualSize || header.chunkSize !== disk.chunkSize) {
        throw new RepositoryError('CORRUPT', `index of ${where} is for ${header.virtualSize} bytes in chunks of ${header.chunkSize}, the manifest says ${disk.virtualSize} in ${disk.chunkSize}`, 'restore from another recovery point; run verify');
      }
      const data = await fs.readFile(file);
      const slots = data.subarray(INDEX_HEADER_SIZE);
      // Read twice (checked, then loaded): a file changed in between is caught here.
      if (slots.length !== header.count * 32) throw new RepositoryError('CORRUPT', `index of ${where} changed while it was read`, 'retry');
      return { virtualSize: header.virtualSize, chunkSize: header.chunkSize, slots };
    },
    readChunk: (digest) => repo.chunks.read(digest),
  };
}

/** Chunks fetched from the storage API (agent or admin token). */
export function storageApiChunkSource(client: StorageClient, point: PointRef, diskId: string): ChunkSource {
  return {
    where: `${point.dataSource}/${point.pointId}/${diskId}`,
    checksDigests: false,
    async readIndex() {
      const where = `${point.dataSource}/${point.pointId}/${diskId}`;
      const [manifest, index] = await Promise.all([client.getPoint(point), client.getIndex(point, diskId)]);
      const disk = manifest.disks.find((d) => d.diskId === diskId);
      if (!disk || index.checksum !== disk.indexDigest || index.virtualSize !== disk.virtualSize || index.chunkSize !== disk.chunkSize) {
        throw new RepositoryError('CORRUPT', `index of ${where} does not match its manifest`, 'restore from another recovery point; run verify on the server');
      }
      return { virtualSize: index.virtualSize, chunkSize: index.chunkSize, slots: index.slots };
    },
    readChunk: (digest) => client.getChunk(digest),
    // One request per batch; decoded and hashed on worker threads (chunk-decoder.ts).
    readChunks: async (digests) => decodeChunkRecords(await client.readChunks(digests), digests, `${point.dataSource}/${point.pointId}/${diskId}`),
    batchChunks: 16,
  };
}
