// The lab's only door to the VHDX library (vhdx/): disks are created, written, checkpointed and
// merged through it, never through VHDX code of the lab's own. Loaded on first use so that lab
// code that touches no disk (state, locks, change tracking) works without it.
import type { DiskReader } from '../types';
import type * as Vhdx from '../../vhdx';

let loaded: typeof Vhdx | undefined;
function vhdx(): typeof Vhdx {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  loaded ??= require('../../vhdx') as typeof Vhdx;
  return loaded;
}

export type VhdxDisk = Vhdx.VhdxDisk;

export async function openDisk(path: string, writable: boolean): Promise<VhdxDisk> {
  return vhdx().openVhdx(path, { writable });
}

export async function createDisk(path: string, opts: Vhdx.DynamicOptions): Promise<void> {
  // Leave out undefined options: the library's defaults apply only to absent keys.
  const o = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) as unknown as Vhdx.DynamicOptions;
  await vhdx().createDynamicVhdx(path, o);
}

export async function createChild(childPath: string, parentPath: string): Promise<void> {
  await vhdx().createDifferencingVhdx(childPath, parentPath);
}

export async function mergeChild(childPath: string): Promise<void> {
  await vhdx().mergeDifferencingIntoParent(childPath);
}

export function isVhdxError(e: unknown): boolean {
  return e instanceof Error && e.name === 'VhdxError';
}

/** Apply writes to the disk file and make them durable; the file is open only for this call. */
export async function writeDisk(path: string, writes: { offset: number; data: Buffer }[]): Promise<void> {
  const disk = await openDisk(path, true);
  try {
    for (const w of writes) await disk.write(w.offset, w.data);
    await disk.flush();
  } finally {
    await disk.close();
  }
}

export async function readDisk(path: string, offset: number, length: number): Promise<Buffer> {
  const disk = await openDisk(path, false);
  try {
    return await disk.read(offset, length);
  } finally {
    await disk.close();
  }
}

function normalise(ranges: { offset: number; length: number }[]): { offset: number; length: number }[] {
  const sorted = ranges.filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const out: { offset: number; length: number }[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ offset: r.offset, length: r.length });
  }
  return out;
}

/** A DiskReader over a VHDX (and its parents), opened read-only. */
export async function openDiskReader(path: string): Promise<DiskReader> {
  const disk = await openDisk(path, false);
  let closed = false;
  return {
    virtualSize: disk.virtualSize,
    read: (offset, length) => {
      if (closed) throw new Error(`${path}: reader is closed`);
      return disk.read(offset, length);
    },
    readInto: async (target, offset) => {
      if (closed) throw new Error(`${path}: reader is closed`);
      await disk.readInto(target, offset);
    },
    allocatedRanges: async () => normalise(await disk.allocatedRanges()),
    close: async () => {
      if (closed) return;
      closed = true;
      await disk.close();
    },
  };
}

/** Copy a disk's content (through its chain) into a new dynamic VHDX. */
export async function copyDiskContent(fromPath: string, toPath: string): Promise<void> {
  const src = await openDisk(fromPath, false);
  try {
    await createDisk(toPath, { virtualSize: src.virtualSize });
    const dst = await openDisk(toPath, true);
    try {
      const step = 4 * 1024 * 1024;
      for (const r of normalise(await src.allocatedRanges())) {
        for (let off = r.offset; off < r.offset + r.length; off += step) {
          const len = Math.min(step, r.offset + r.length - off);
          await dst.write(off, await src.read(off, len));
        }
      }
      await dst.flush();
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}
