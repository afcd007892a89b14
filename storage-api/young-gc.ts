// Young-generation sweeps paced by upload bytes. Node's HTTP parser hands each piece of a request
// body over as a fresh Buffer (binary-body.ts copies it into pooled memory at once, and the piece
// is garbage). V8 counts that memory as external and frees the count only when a GC finds the
// piece dead; the storage API allocates so little on its own heap that no scavenge comes first,
// so every 64 MB of body set off a full mark-compact instead: 114 in a 4 GiB ingest (20 s), on
// the main thread and V8's concurrent markers. A scavenge after every 16 MiB of body finds the
// pieces dead at ~1-3 ms each: 29 full GCs left, 213,000 page faults instead of 464,000
// (bench/repository-ingest.md).
//
// The pace adapts to the room V8 gives the old generation. V8 counts external memory allocated
// since the last mark-compact against that room, so 16 MiB of dead pieces between two sweeps is
// harmless where the room is large (the storage API alone: V8 sizes it up to 4x the live heap)
// and sets off a full collection after another where it is small: a protection server, whose
// old generation (~36 MB live) fills slowly while it receives, gets 9-12 MB (factor 1.1-1.3,
// --trace-gc-verbose), and ran 6-9 full collections in every express full of 163 MiB
// (bench/backup-e2e.ts, 2 Dec: the rounds without them transferred in 0.71 s instead of 1.1-1.3 s).
// So a full collection that comes less than FULL_GC_TOO_SOON_BYTES of body after the last one
// halves the distance between sweeps (down to MIN_SWEEP_EVERY_BYTES), and every
// RELAX_AFTER_BYTES of body without one doubles it again (up to SWEEP_EVERY_BYTES): the pace
// stays at 16 MiB where the room is large, and tightens only where full collections show it is
// not. (Giving the old generation a fixed larger room instead, V8's --heap-growing-percent, was
// measured and refused: at +50% it took the rooms V8 makes larger down too, and the storage API's
// 4 GiB ingest cost 25-30% more server CPU, 16.5 -> 19.3 s; at +100% the server's peak RSS passed
// 300 MiB.)
//
// The scavenge is V8's own, reached as `gc({ type: 'minor' })`: exposed here once per process
// through a V8 flag and a fresh context (the documented flag; no command-line option needed, so
// every launcher of the storage API has it), the flag turned off again at once so that no other
// context gets a global gc. Where it cannot be had, nothing is forced.
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { PerformanceObserver, constants as perf } from 'node:perf_hooks';

const MiB = 1024 * 1024;
/** Bytes of request body between two scavenges, at most (the pace where full collections are rare). */
export const SWEEP_EVERY_BYTES = 16 * MiB;
/** ... and at least (the pace where they are not). */
export const MIN_SWEEP_EVERY_BYTES = 2 * MiB;
/** A full collection this little body after the previous one tightens the pace. */
export const FULL_GC_TOO_SOON_BYTES = 64 * MiB;
/** This much body without a full collection relaxes it again. */
export const RELAX_AFTER_BYTES = 256 * MiB;

type Gc = (options: { type: 'minor' }) => void;

let gcFn: Gc | null | undefined;

function exposedGc(): Gc | null {
  if (gcFn !== undefined) return gcFn;
  const existing = (globalThis as { gc?: Gc }).gc;
  if (typeof existing === 'function') return (gcFn = existing);
  try {
    v8.setFlagsFromString('--expose-gc');
    const fn = vm.runInNewContext('gc') as unknown;
    gcFn = typeof fn === 'function' ? (fn as Gc) : null;
  } catch {
    gcFn = null;
  } finally {
    // Only this one context gets it: contexts made later (a protection server's workflow
    // sandboxes among them) have no global gc, as without the flag.
    try {
      v8.setFlagsFromString('--no-expose-gc');
    } catch {
      /* the flag stays; nothing else depends on it */
    }
  }
  return gcFn;
}

let sinceSweep = 0;
let sweeps = 0;
let sweepEvery = SWEEP_EVERY_BYTES;
/** Body bytes since the last full collection, and since the pace last changed or a full collection came. */
let sinceFullGc = 0;
let sinceTightened = 0;
let observer: PerformanceObserver | undefined;

/** Counts body bytes received; runs a scavenge each time the pace's bytes have come in. */
export function bodyBytesReceived(n: number): void {
  watchFullCollections();
  sinceFullGc += n;
  sinceTightened += n;
  if (sinceTightened >= RELAX_AFTER_BYTES) {
    sinceTightened = 0;
    sweepEvery = Math.min(SWEEP_EVERY_BYTES, sweepEvery * 2);
  }
  sinceSweep += n;
  if (sinceSweep < sweepEvery) return;
  sinceSweep = 0;
  const gc = exposedGc();
  if (!gc) return;
  gc({ type: 'minor' });
  sweeps++;
}

/**
 * A full collection happened (V8's mark-compact; told by the observer below). Bodies flowing and
 * the last one less than FULL_GC_TOO_SOON_BYTES of body ago: the old generation's room is being
 * spent by dead pieces, so sweep twice as often. A full collection with no body since (idle, the
 * memory reducer) says nothing about the pace.
 */
export function fullCollectionSeen(): void {
  if (sinceFullGc > 0 && sinceFullGc < FULL_GC_TOO_SOON_BYTES) {
    sweepEvery = Math.max(MIN_SWEEP_EVERY_BYTES, sweepEvery / 2);
    sinceSweep = Math.min(sinceSweep, sweepEvery);
  }
  sinceFullGc = 0;
  sinceTightened = 0;
}

/** Started with the first body: a process that receives none observes nothing. */
function watchFullCollections(): void {
  if (observer) return;
  observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      if ((e as unknown as { detail?: { kind?: number } }).detail?.kind === perf.NODE_PERFORMANCE_GC_MAJOR) fullCollectionSeen();
    }
  });
  observer.observe({ entryTypes: ['gc'] });
}

/** Scavenges run so far (for tests and metrics). */
export function youngSweeps(): number {
  return sweeps;
}

/** Body bytes between two scavenges now. */
export function sweepPace(): number {
  return sweepEvery;
}
