// Starting the worker threads hvprotect makes (chunk encoders, restore decoders, the workflow
// bundler). A worker's start can grow the starting thread's young generation: V8 puts the
// semi-space growth factor back to 2 as it makes the worker's heap (workers/young-generation.ts
// holds it at 1), and the 'online' event that sets it again comes only when this thread's event
// loop turns. A thread allocating hard in between (a server starting up) doubles its new space at
// each scavenge: the protection server's main thread was seen at 8 MiB instead of 2, right as its
// chunk encoders started (2 Dec, a preload reporting heap spaces through bench/backup-e2e).
// So where a hook is set (the small young generation is on), startWorker waits (Atomics.wait,
// ~30 ms per worker, at start-up) until the worker's first line runs, its heap made, and calls
// the hook before this thread allocates anything more. Without a hook it only starts the worker.
import { Worker, type WorkerOptions } from 'node:worker_threads';

const READY_KEY = '__hvprotectWorkerReady';
const READY_PRELUDE =
  `{ const d = require('node:worker_threads').workerData; const f = d && d[${JSON.stringify(READY_KEY)}];` +
  ' if (f) { const a = new Int32Array(f); Atomics.store(a, 0, 1); Atomics.notify(a, 0); } }\n';
/** Longest wait for a worker's first line; past it the worker goes on starting and 'online' resets the factor. */
const READY_WAIT_MS = 5_000;

let afterHeapMade: (() => void) | undefined;

/** Called once each worker started through startWorker has its heap (workers/young-generation.ts). */
export function whenWorkerHeapMade(fn: () => void): void {
  afterHeapMade = fn;
}

/** A worker thread running `source` (eval), started so that its start cannot grow this thread's young generation. */
export function startWorker(source: string, options: Omit<WorkerOptions, 'eval'> & { workerData?: Record<string, unknown> } = {}): Worker {
  const hook = afterHeapMade;
  if (!hook) return new Worker(source, { ...options, eval: true });
  const ready = new SharedArrayBuffer(4);
  const worker = new Worker(READY_PRELUDE + source, { ...options, eval: true, workerData: { ...(options.workerData ?? {}), [READY_KEY]: ready } });
  Atomics.wait(new Int32Array(ready), 0, 0, READY_WAIT_MS);
  hook();
  return worker;
}
