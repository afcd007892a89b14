// Sector bitmap block (differencing disks): 1 MiB, one bit per logical sector of the chunk of
// payload blocks it covers (2^23 sectors). Bit k of byte j describes sector 8*j + k of the chunk:
// 1 = the sector's data is in this file, 0 = read it from the parent. Consulted only for a
// payload block in state PARTIALLY_PRESENT.

/** Byte range inside the chunk's bitmap that describes payload block `block`. */
export function bitmapSliceOfBlock(block: number, chunkRatio: number, sectorsPerBlock: number): { byteOffset: number; byteLength: number } {
  const firstSector = (block % chunkRatio) * sectorsPerBlock;
  return { byteOffset: firstSector / 8, byteLength: sectorsPerBlock / 8 };
}

export function isSectorPresent(slice: Buffer, sector: number): boolean {
  return (slice[sector >>> 3]! & (1 << (sector & 7))) !== 0;
}

/** Runs of equal presence over sectors [from, to) of a block's bitmap slice. */
export function presenceRuns(slice: Buffer, from: number, to: number): { start: number; end: number; present: boolean }[] {
  const runs: { start: number; end: number; present: boolean }[] = [];
  let s = from;
  while (s < to) {
    const present = isSectorPresent(slice, s);
    let e = s + 1;
    while (e < to) {
      // Whole bytes of the same value are skipped at once.
      if ((e & 7) === 0 && e + 8 <= to && slice[e >>> 3] === (present ? 0xff : 0)) {
        e += 8;
        continue;
      }
      if (isSectorPresent(slice, e) !== present) break;
      e++;
    }
    runs.push({ start: s, end: e, present });
    s = e;
  }
  return runs;
}

/** Set the bits of sectors [from, to). */
export function markPresent(slice: Buffer, from: number, to: number): void {
  for (let s = from; s < to; s++) slice[s >>> 3] |= 1 << (s & 7);
}
