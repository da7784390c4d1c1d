// Order statistics for the bench: medians over alternating rounds, percentiles of latencies.

/** The element at rank ceil(q * n) (nearest rank), q in (0, 1]; the median is q = 0.5. */
export function percentile(xs: ArrayLike<number>, q: number): number {
  if (xs.length === 0) throw new Error('percentile of no samples');
  const sorted = Array.from(xs).sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)]!;
}

/** The middle element (the upper one of an even count): rounds are odd in number. */
export function median(xs: number[]): number {
  if (xs.length === 0) throw new Error('median of no samples');
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}
