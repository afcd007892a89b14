// Chunk geometry of a disk: which fixed-size slots a set of byte ranges touches. Slot i covers
// bytes [i*chunkSize, min((i+1)*chunkSize, virtualSize)), as in the repository's fixed index.

export interface ByteRange {
  offset: number;
  length: number;
}

export function slotCount(virtualSize: number, chunkSize: number): number {
  return Math.ceil(virtualSize / chunkSize);
}

/** Every slot of the disk, in order. */
export function* allSlots(virtualSize: number, chunkSize: number): Generator<number> {
  const n = slotCount(virtualSize, chunkSize);
  for (let s = 0; s < n; s++) yield s;
}

/** Slots touched by the ranges, ascending, each once. A range outside the disk is an error. */
export function* slotsOfRanges(ranges: ByteRange[], chunkSize: number, virtualSize: number): Generator<number> {
  const sorted = [...ranges].filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const count = slotCount(virtualSize, chunkSize);
  let next = 0;
  for (const r of sorted) {
    if (r.offset < 0 || r.offset + r.length > virtualSize) throw new RangeError(`changed range ${r.offset}+${r.length} outside the disk of ${virtualSize} bytes`);
    const first = Math.max(next, Math.floor(r.offset / chunkSize));
    const last = Math.min(count - 1, Math.floor((r.offset + r.length - 1) / chunkSize));
    for (let s = first; s <= last; s++) yield s;
    next = Math.max(next, last + 1);
  }
}

/** Slots whose digest in a fixed index's slot area (32 bytes each) is not all zero. */
export function* nonZeroSlots(index: Buffer, virtualSize: number, chunkSize: number): Generator<number> {
  const n = Math.min(index.length / 32, slotCount(virtualSize, chunkSize));
  for (let s = 0; s < n; s++) {
    for (let b = s * 32; b < (s + 1) * 32; b++) {
      if (index[b] !== 0) {
        yield s;
        break;
      }
    }
  }
}

/** Two ascending slot sequences as one, each slot once. */
export function* mergeSlots(a: Iterable<number>, b: Iterable<number>): Generator<number> {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  let x = ia.next();
  let y = ib.next();
  while (!x.done || !y.done) {
    if (y.done || (!x.done && x.value < y.value)) {
      yield x.value;
      x = ia.next();
    } else if (x.done || y.value < x.value) {
      yield y.value;
      y = ib.next();
    } else {
      yield x.value;
      x = ia.next();
      y = ib.next();
    }
  }
}
