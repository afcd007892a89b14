// A small young generation for every V8 heap of an hvprotect process. V8 grows a heap's
// semi-spaces (1 MiB each at start) up to 16 MiB when much survives its scavenges, and module
// loading at start-up is enough for that: every isolate of a server (the main thread, Temporal's
// workflow thread, the chunk encoders) then holds ~32 MiB of new space for its life, though what
// it allocates during a backup is small and short-lived (bodies live in the pool, buffer-pool.ts).
// Measured with `bench/backup-e2e.ts --rounds 1` (1 Dec): the protection server's peak RSS
// 336-343 MiB with V8's growth, 295 MiB without (the agent's 214-243 against 181 MiB); and with
// `bench/repository-ingest.ts --tools hvprotect`, 3 pairs in turn, no cost: initial ingest 17.6,
// 17.6, 19.2 s against 19.7, 19.6, 19.8 s, server CPU 23.7, 23.9, 28.2 against 30.7, 29.7, 31.4 s.
//
// Set as V8 flags at run time, first thing in the process, so that no launcher needs a node
// option. Two flags, because V8 reads them at different times:
// - `--max-semi-space-size` (MiB) when it makes a heap: every worker thread made after this;
// - the growth factor each time it would grow a heap's new space: this thread's heap, made
//   before any code ran. V8 raises a factor below 2 back to 2 whenever it makes a heap (seen
//   here: a worker thread's start undid it), so it is set again once each worker has started.
import v8 from 'node:v8';

const NO_GROWTH = '--semi-space-growth-factor=1';

v8.setFlagsFromString('--max-semi-space-size=1');
v8.setFlagsFromString(NO_GROWTH);
process.on('worker', (worker) => worker.once('online', () => v8.setFlagsFromString(NO_GROWTH)));
