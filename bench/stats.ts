/**
 * Summary statistics shared by the benchmarks: one median for every bench
 * (the mean of the two middle values for an even count, NaN for none).
 */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
