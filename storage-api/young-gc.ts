// Young-generation sweeps paced by upload bytes. Node's HTTP parser hands each piece of a request
// body over as a fresh Buffer (binary-body.ts copies it into pooled memory at once, and the piece
// is garbage). V8 counts that memory as external and frees the count only when a GC finds the
// piece dead; the storage API allocates so little on its own heap that no scavenge comes first,
// so every 64 MB of body set off a full mark-compact instead: 114 in a 4 GiB ingest (20 s), on
// the main thread and V8's concurrent markers. A scavenge after every 16 MiB of body finds the
// pieces dead at ~1-3 ms each: 29 full GCs left, 213,000 page faults instead of 464,000
// (bench/repository-ingest.md).
//
// The scavenge is V8's own, reached as `gc({ type: 'minor' })`: exposed here once per process
// through a V8 flag and a fresh context (the documented flag; no command-line option needed, so
// every launcher of the storage API has it), the flag turned off again at once so that no other
// context gets a global gc. Where it cannot be had, nothing is forced.
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

/** Bytes of request body between two scavenges. */
export const SWEEP_EVERY_BYTES = 16 * 1024 * 1024;

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

/** Counts body bytes received; runs a scavenge each time SWEEP_EVERY_BYTES have come in. */
export function bodyBytesReceived(n: number): void {
  sinceSweep += n;
  if (sinceSweep < SWEEP_EVERY_BYTES) return;
  sinceSweep = 0;
  const gc = exposedGc();
  if (!gc) return;
  gc({ type: 'minor' });
  sweeps++;
}

/** Scavenges run so far (for tests and metrics). */
export function youngSweeps(): number {
  return sweeps;
}
