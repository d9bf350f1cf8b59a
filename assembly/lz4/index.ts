/**
 * LZ4 block format (lz4/doc/lz4_Block_format.md): decompress (hot) and a
 * greedy single-pass compressor following LZ4_compress_generic (lz4.c,
 * acceleration 1, byU32 table): a 4096-entry hash table of 5-byte
 * sequences (LZ4_hash5; the table stays in L1), the skip step that grows
 * every 64 misses (LZ4_skipTrigger), the "test the next position" shortcut
 * after each match, 16-byte wild literal copies where both buffers have
 * room. Image conversion (src/image/chunker.ts) spends most of its CPU here. Pure functions over linear memory; no
 * static data, no allocation, no traps on hostile input.
 *
 * A block is a series of sequences:
 *   token (literal length:4 | match length − 4:4), [literal length bytes…],
 *   literals, offset (u16 LE, 1..65535), [match length bytes…]
 * and ends after the literals of its last sequence. Length nibbles of 15 are
 * continued by bytes added up to (and including) the first byte ≠ 255.
 *
 * Exported ABI (all pointers are byte offsets into the imported memory, all
 * lengths u32; the caller owns every buffer):
 *
 *   decompress(src, srcLen, dst, dstCap, partial) → i32
 *       Decodes the block [src, src+srcLen) into [dst, dst+dstCap).
 *       Returns the number of bytes written (≥ 0) or an ERR_* code (< 0).
 *       Reads stay inside the source range and writes inside the
 *       destination range whatever the input (may scribble anywhere in
 *       [dst, dst+dstCap) beyond the returned length). partial ≠ 0: stop,
 *       successfully, when dstCap bytes are produced (LZ4_decompress_safe_
 *       partial, what EROFS uses for a prefix of an extent); partial = 0:
 *       the block must end exactly at srcLen and fit in dstCap.
 *       Matches may not reach before dst (no external dictionary).
 *   compressBound(n) → u32      worst-case compressed size of n bytes.
 *   workspaceSize() → u32       bytes of the `work` table compress() needs.
 *   compress(src, srcLen, dst, dstCap, work) → i32
 *       Compresses into one block; returns its size or ERR_OUTPUT_OVERFLOW
 *       when dstCap is too small (a dstCap under srcLen makes this the
 *       caller's "does not compress" test). `work` is workspaceSize() bytes, 4-byte
 *       aligned, cleared on every call so output depends only on input.
 *       Output obeys the end-of-block rules (last match starts ≥ 12 bytes
 *       before the end, last 5 bytes are literals) so every LZ4 decoder,
 *       the kernel's included, accepts it.
 *
 * Error codes:
 *   ERR_INPUT_TRUNCATED (-1)  a length, literal run or offset runs past srcLen
 *   ERR_OUTPUT_OVERFLOW (-2)  output would pass dstCap (non-partial mode)
 *   ERR_BAD_OFFSET      (-3)  offset 0 or before the start of the output
 *   ERR_ARGS            (-4)  source or destination range wraps memory
 */

export const ERR_INPUT_TRUNCATED: i32 = -1;
export const ERR_OUTPUT_OVERFLOW: i32 = -2;
export const ERR_BAD_OFFSET: i32 = -3;
export const ERR_ARGS: i32 = -4;

const MINMATCH: u32 = 4;
/** Last 5 bytes of a block are literals. */
const LASTLITERALS: u32 = 5;
/** The last match starts at least 12 bytes before the end of the block. */
const MFLIMIT: u32 = 12;
const MAX_DISTANCE: u32 = 65535;
const HASH_LOG: u32 = 12;
const HASH_ENTRIES: u32 = 1 << HASH_LOG;
/** Slack the decoder's wide copies need inside both buffers. */
const WILD: usize = 32;

export function decompress(src: usize, srcLen: u32, dst: usize, dstCap: u32, partial: u32): i32 {
  // Two copies of the loop, the partial-mode tests folded away in each.
  return partial != 0 ? decode(src, srcLen, dst, dstCap, true) : decode(src, srcLen, dst, dstCap, false);
}

@inline function decode(src: usize, srcLen: u32, dst: usize, dstCap: u32, partial: bool): i32 {
  const iend = src + <usize>srcLen;
  const oend = dst + <usize>dstCap;
  if (iend < src || oend < dst) return ERR_ARGS;
  if (srcLen == 0) return ERR_INPUT_TRUNCATED;
  // Positions up to which 16/32-byte wide reads and writes stay in bounds.
  const iFast: usize = srcLen >= <u32>WILD ? iend - WILD : 0;
  const oFast: usize = dstCap >= <u32>WILD ? oend - WILD : 0;
  // Lengths can never legitimately exceed these; checking while reading the
  // continuation bytes keeps sums from wrapping u32.
  const litLimit = srcLen;
  const matchLimit = dstCap;
  let ip = src;
  let op = dst;

  while (true) {
    if (ip >= iend) return ERR_INPUT_TRUNCATED;
    const token = <u32>load<u8>(ip);
    ip++;
    let ll = token >> 4;
    if (ll < 15 && ip <= iFast && op <= oFast) {
      // Short literal run with room on both sides: copy 16 bytes blindly.
      v128.store(op, v128.load(ip));
      op += ll;
      ip += ll;
    } else {
      if (ll == 15) {
        let b: u32 = 255;
        do {
          if (ip >= iend) return ERR_INPUT_TRUNCATED;
          b = <u32>load<u8>(ip);
          ip++;
          ll += b;
          if (ll > litLimit) return ERR_INPUT_TRUNCATED;
        } while (b == 255);
      }
      if (<usize>ll > iend - ip) return ERR_INPUT_TRUNCATED;
      if (<usize>ll > oend - op) {
        if (!partial) return ERR_OUTPUT_OVERFLOW;
        memory.copy(op, ip, oend - op);
        return <i32>dstCap;
      }
      if (ip + <usize>ll <= iFast && op + <usize>ll <= oFast) {
        // Long run with room behind it: 16-byte wild copies beat a call.
        const lend = op + <usize>ll;
        let s = ip;
        let d = op;
        do {
          v128.store(d, v128.load(s));
          d += 16;
          s += 16;
        } while (d < lend);
      } else {
        memory.copy(op, ip, ll);
      }
      op += ll;
      ip += ll;
      if (ip == iend) return <i32>(op - dst);
    }
    if (partial && op == oend) return <i32>dstCap;

    // Match.
    if (iend - ip < 2) return ERR_INPUT_TRUNCATED;
    const offset = <usize>load<u16>(ip);
    ip += 2;
    if (offset == 0 || offset > op - dst) return ERR_BAD_OFFSET;
    let ml = token & 15;
    let match = op - offset;
    // Short match (4..18 bytes) with 32 bytes of room: fixed-size copies, no
    // loop. offset ≥ 16 (or ≥ 8 for 8-byte steps) makes each load read bytes
    // already final, overlap included.
    if (ml < 15 && op <= oFast) {
      if (offset >= 16) {
        v128.store(op, v128.load(match));
        v128.store(op, v128.load(match, 16), 16);
        op += <usize>ml + MINMATCH;
        continue;
      }
      if (offset >= 8) {
        store<u64>(op, load<u64>(match));
        store<u64>(op, load<u64>(match, 8), 8);
        store<u64>(op, load<u64>(match, 16), 16);
        op += <usize>ml + MINMATCH;
        continue;
      }
    }
    if (ml == 15) {
      let b: u32 = 255;
      do {
        if (ip >= iend) return ERR_INPUT_TRUNCATED;
        b = <u32>load<u8>(ip);
        ip++;
        ml += b;
        if (ml > matchLimit) {
          // Longer than the whole output: fills it in partial mode.
          if (!partial) return ERR_OUTPUT_OVERFLOW;
          break;
        }
      } while (b == 255);
    }
    ml += MINMATCH;
    let cpy = op + <usize>ml;
    if (cpy > oend) {
      if (!partial) return ERR_OUTPUT_OVERFLOW;
      // Byte-exact tail into the last bytes of the buffer.
      while (op < oend) {
        store<u8>(op, load<u8>(match));
        op++;
        match++;
      }
      return <i32>dstCap;
    }
    if (cpy <= oFast) {
      if (offset >= 16) {
        if (offset >= <usize>ml && ml > 64) {
          memory.copy(op, match, ml);
        } else {
          do {
            v128.store(op, v128.load(match));
            op += 16;
            match += 16;
          } while (op < cpy);
        }
      } else if (offset >= 8) {
        do {
          store<u64>(op, load<u64>(match));
          op += 8;
          match += 8;
        } while (op < cpy);
      } else {
        // Period < 8: lay down the first 8 bytes one at a time, then copy
        // 8-byte words from a whole number of periods (≥ 8) back.
        store<u8>(op, load<u8>(match));
        store<u8>(op, load<u8>(match, 1), 1);
        store<u8>(op, load<u8>(match, 2), 2);
        store<u8>(op, load<u8>(match, 3), 3);
        store<u8>(op, load<u8>(match, 4), 4);
        store<u8>(op, load<u8>(match, 5), 5);
        store<u8>(op, load<u8>(match, 6), 6);
        store<u8>(op, load<u8>(match, 7), 7);
        const step = offset * ((8 + offset - 1) / offset);
        op += 8;
        match = op - step;
        while (op < cpy) {
          store<u64>(op, load<u64>(match));
          op += 8;
          match += 8;
        }
      }
      op = cpy;
    } else {
      // Near the end of the output: exact byte copy (overlap-safe).
      while (op < cpy) {
        store<u8>(op, load<u8>(match));
        op++;
        match++;
      }
    }
    if (partial && op == oend) return <i32>dstCap;
  }
  return ERR_ARGS; // unreachable
}

export function compressBound(n: u32): u32 {
  return n + n / 255 + 16;
}

export function workspaceSize(): u32 {
  return HASH_ENTRIES * 4;
}

// @ts-ignore: decorator
@inline function hashAt(p: usize): usize {
  // LZ4_hash5 (little endian): 5 bytes of a u64 read, multiplicative hash.
  return <usize>(((load<u64>(p) << 24) * 889523592379) >> (64 - HASH_LOG)) << 2;
}

// @ts-ignore: decorator
@inline function writeLength(op: usize, len: u32): usize {
  // Continuation bytes for a length whose nibble was 15 (len already − 15).
  while (len >= 255) {
    store<u8>(op, 255);
    op++;
    len -= 255;
  }
  store<u8>(op, <u8>len);
  return op + 1;
}

// @ts-ignore: decorator
@inline function copyLiterals(op: usize, ip: usize, n: usize, wildOk: bool): void {
  // 16-byte wild copies when both sides have room past the run, else memmove.
  if (wildOk) {
    const end = op + n;
    do {
      v128.store(op, v128.load(ip));
      op += 16;
      ip += 16;
    } while (op < end);
  } else {
    memory.copy(op, ip, n);
  }
}

export function compress(src: usize, srcLen: u32, dst: usize, dstCap: u32, work: usize): i32 {
  const oend = dst + <usize>dstCap;
  const iend = src + <usize>srcLen;
  if (iend < src || oend < dst) return ERR_ARGS;
  memory.fill(work, 0, HASH_ENTRIES * 4);
  let op = dst;
  let anchor = src;

  if (srcLen >= MFLIMIT + 1) {
    // A match may start at ≤ mflimit and end at ≤ matchlimit; 8-byte reads
    // for hashing stay below iend (mflimit + 8 ≤ iend − 4).
    const mflimit = iend - MFLIMIT;
    const matchlimit = iend - LASTLITERALS;
    // Wild (16-byte) literal copies need 16 bytes of room after the run.
    const iWild = iend - 16;
    const oWild: usize = dstCap >= 32 ? oend - 32 : dst;
    let ip = src;
    store<u32>(work + hashAt(ip), 0);
    ip++;
    let fh = hashAt(ip);
    let ended = false;
    while (true) {
      // Find a 4-byte match; the step grows by one every 64 misses (LZ4's
      // skip trigger), so incompressible data is crossed quickly.
      let match: usize = 0;
      let fwd = ip;
      let attempts: u32 = 1 << 6;
      let step: usize = 1;
      do {
        const h = fh;
        ip = fwd;
        fwd += step;
        step = <usize>(attempts >> 6);
        attempts++;
        if (fwd > mflimit) {
          ended = true;
          break;
        }
        match = src + <usize>load<u32>(work + h);
        fh = hashAt(fwd);
        store<u32>(work + h, <u32>(ip - src));
      } while (match + MAX_DISTANCE < ip || load<u32>(match) != load<u32>(ip));
      if (ended) break;

      // Extend backwards over pending literals.
      while (ip > anchor && match > src && load<u8>(ip - 1) == load<u8>(match - 1)) {
        ip--;
        match--;
      }
      // Literals of this sequence.
      const ll = <u32>(ip - anchor);
      if (<usize>(1 + ll / 255 + 1 + ll + 2 + 1 + LASTLITERALS) > oend - op) return ERR_OUTPUT_OVERFLOW;
      let tokenAt = op;
      op++;
      if (ll >= 15) {
        store<u8>(tokenAt, 15 << 4);
        op = writeLength(op, ll - 15);
      } else {
        store<u8>(tokenAt, <u8>(ll << 4));
      }
      copyLiterals(op, anchor, ll, anchor + <usize>ll <= iWild && op + <usize>ll <= oWild);
      op += ll;

      while (true) {
        // Offset, then the match's length: 8 bytes at a time.
        store<u16>(op, <u16>(ip - match));
        op += 2;
        let a = ip + MINMATCH;
        let b = match + MINMATCH;
        while (true) {
          if (a + 8 > matchlimit) {
            while (a < matchlimit && load<u8>(a) == load<u8>(b)) {
              a++;
              b++;
            }
            break;
          }
          const diff = load<u64>(a) ^ load<u64>(b);
          if (diff != 0) {
            a += <usize>(ctz(diff) >> 3);
            break;
          }
          a += 8;
          b += 8;
        }
        const mlx = <u32>(a - ip) - MINMATCH;
        if (<usize>(mlx / 255 + 1 + LASTLITERALS) > oend - op) return ERR_OUTPUT_OVERFLOW;
        if (mlx >= 15) {
          store<u8>(tokenAt, load<u8>(tokenAt) | 15);
          op = writeLength(op, mlx - 15);
        } else {
          store<u8>(tokenAt, load<u8>(tokenAt) | <u8>mlx);
        }
        ip = a;
        anchor = ip;
        if (ip > mflimit) {
          ended = true;
          break;
        }
        // Seed the table with the position before, as LZ4 does, then test
        // the next position at once: runs of matches need no search.
        store<u32>(work + hashAt(ip - 2), <u32>(ip - 2 - src));
        const h = hashAt(ip);
        match = src + <usize>load<u32>(work + h);
        store<u32>(work + h, <u32>(ip - src));
        if (match + MAX_DISTANCE >= ip && load<u32>(match) == load<u32>(ip)) {
          if (<usize>(1 + 2 + 1 + LASTLITERALS) > oend - op) return ERR_OUTPUT_OVERFLOW;
          tokenAt = op;
          store<u8>(op, 0);
          op++;
          continue;
        }
        break;
      }
      if (ended) break;
      ip++;
      fh = hashAt(ip);
    }
  }
  // Last literals.
  const ll = <u32>(iend - anchor);
  if (<usize>(1 + ll / 255 + 1 + ll) > oend - op) return ERR_OUTPUT_OVERFLOW;
  if (ll >= 15) {
    store<u8>(op, 15 << 4);
    op = writeLength(op + 1, ll - 15);
  } else {
    store<u8>(op, <u8>(ll << 4));
    op++;
  }
  memory.copy(op, anchor, ll);
  op += ll;
  return <i32>(op - dst);
}
