/**
 * Deterministic pseudo-random numbers for test data (xorshift32): the same
 * seed gives the same bytes on every run, so a failing input reproduces.
 * Not for anything that needs real randomness.
 */
export function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s;
  };
}
