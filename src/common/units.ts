/**
 * Human-readable sizes for CLI output: one spelling of "N.N MiB" for
 * kata-ts and kata-ctl alike.
 */
export function formatMiB(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}
