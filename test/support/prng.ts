// xorshift32: a deterministic stream of 32-bit numbers, for test disks and benchmark images that
// must be the same on every run.
export function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}
