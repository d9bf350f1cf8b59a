/**
 * Parses a statistics buffer of the balloon's statsq (virtio 1.2 §5.5.6.3):
 * an array of packed 10-byte { le16 tag; le64 val } entries. Everything here
 * comes from the guest and is untrusted: a length that is not a multiple of
 * 10, unknown tags, byte counts beyond the VM's RAM, free > total — each is
 * a warning and a count; nothing throws and nothing is acted on.
 */
import { STAT_BYTE_TAGS, STAT_ENTRY_BYTES, STAT_NAMES } from './constants';

export interface ParsedStats {
  /** QEMU's guest-stats names → value (bytes or event counts). */
  stats: Record<string, number>;
  /** What was wrong with the buffer (empty for a well-formed one). */
  warnings: string[];
}

export function parseStats(buf: Uint8Array, ramBytes: number): ParsedStats {
  const warnings: string[] = [];
  const stats: Record<string, number> = {};
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const whole = Math.floor(buf.length / STAT_ENTRY_BYTES) * STAT_ENTRY_BYTES;
  if (whole !== buf.length) warnings.push(`statistics buffer of ${buf.length} bytes is not a multiple of ${STAT_ENTRY_BYTES}: the last ${buf.length - whole} bytes ignored`);
  for (let p = 0; p < whole; p += STAT_ENTRY_BYTES) {
    const tag = view.getUint16(p, true);
    const val = view.getBigUint64(p + 2, true);
    const name = STAT_NAMES[tag];
    // §5.5.6.3.2: the device MUST ignore entries whose tag it does not
    // recognize, and MUST accept entries in any order (a map, not positions).
    if (name === undefined) { warnings.push(`unknown statistics tag ${tag}: ignored`); continue; }
    if (val > BigInt(Number.MAX_SAFE_INTEGER)) { warnings.push(`statistic ${name} = ${val}: out of range, ignored`); continue; }
    const v = Number(val);
    if (STAT_BYTE_TAGS.has(tag) && v > ramBytes) { warnings.push(`guest statistic ${name} = ${v} bytes exceeds the VM's RAM: ignored`); continue; }
    stats[name] = v;
  }
  const free = stats['stat-free-memory'], total = stats['stat-total-memory'];
  if (free !== undefined && total !== undefined && free > total) {
    warnings.push('guest reports more free memory than total: statistics ignored');
    return { stats: {}, warnings };
  }
  return { stats, warnings };
}
