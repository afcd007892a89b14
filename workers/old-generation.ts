// Room for the old generation to grow: twice its live size between two full collections.
//
// V8 sizes that room from how fast the program fills the old generation against how fast it can
// mark it: a protection server promotes little while it receives uploads (bodies live in the
// pool, buffer-pool.ts), so V8 leaves only 9-12 MB above ~36 MB of live objects (factor 1.1-1.3,
// seen with --trace-gc-verbose). But V8 also counts external memory allocated since the last
// mark-compact against that room, and every piece of an HTTP request body is a fresh ArrayBuffer
// that dies young (storage-api/young-gc.ts sweeps them every 16 MiB of body): the room was spent
// by garbage the next scavenge would free, and incremental marking started over and over. In the
// end-to-end benchmark (`bench/backup-e2e.ts`, 2 Dec) the server ran 6-9 full collections in each
// express full of 163 MiB (each ~10 ms of pause, 25-50 ms of marking steps on the main thread,
// and the concurrent markers on the two cores the data path needs); the rounds without them
// transferred in 0.71 s instead of 1.1-1.3 s. With the room at twice the live size (V8's own
// flag, read each time it sets the limit) no full collection fell inside an express full.
//
// The cost is memory: at most the live size again of dead objects before the next collection
// (~40 MB in a server, whose peak RSS stayed at 276 MiB in that run). Set at run time, first thing
// in the process with the young generation (young-generation.ts), so no launcher needs a flag.
import v8 from 'node:v8';

/** Old generation limit after a full collection = live size × (1 + this / 100). */
export const OLD_GENERATION_GROWING_PERCENT = 100;

v8.setFlagsFromString(`--heap-growing-percent=${OLD_GENERATION_GROWING_PERCENT}`);
