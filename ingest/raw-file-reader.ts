// A DiskReader over a raw disk image file (benchmarks, tests, an exported raw disk).
import { promises as fs } from 'node:fs';
import type { DiskReader } from '../hypervisor/types';

export async function openRawFileReader(file: string): Promise<DiskReader> {
  const fh = await fs.open(file, 'r');
  const virtualSize = (await fh.stat()).size;
  const readInto = async (target: Buffer, offset: number): Promise<void> => {
    let done = 0;
    while (done < target.length) {
      const { bytesRead } = await fh.read(target, done, target.length - done, offset + done);
      if (bytesRead === 0) throw new Error(`${file}: ends at ${offset + done}, read asked for ${offset}+${target.length}`);
      done += bytesRead;
    }
  };
  return {
    virtualSize,
    async read(offset, length) {
      const buf = Buffer.allocUnsafe(length);
      await readInto(buf, offset);
      return buf;
    },
    readInto,
    // A raw file says nothing about allocation: all of it may hold data.
    allocatedRanges: async () => [{ offset: 0, length: virtualSize }],
    close: () => fh.close(),
  };
}

/** A DiskReader over bytes in memory (tests). */
export function bufferDiskReader(disk: Buffer): DiskReader {
  return {
    virtualSize: disk.length,
    read: async (offset, length) => disk.subarray(offset, offset + length),
    allocatedRanges: async () => [{ offset: 0, length: disk.length }],
    close: async () => undefined,
  };
}
