/**
 * Page hashing GB/s, side by side in one run (issue 3): assembly/hash
 * (XXH64 + fused zero-page test, through src/hot/pagehash) vs native XXH64 —
 * our C build of the same algorithm, Debian's libxxhash (hash only and with a
 * separate zero scan) and `xxhsum -b` — with libxxhash XXH3 for context.
 * Two working sets: 64 MiB (a guest RAM scan, memory-bound) and 1 MiB
 * (in cache, comparable with `xxhsum -b`'s 100 KB sample).
 *
 *   npx tsc -p tsconfig.json && bash scripts/build-wasm.sh && node dist/bench/hot-pagehash.js
 *
 * Writes build/bench/hot-pagehash.json.
 */
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import { HotMemory } from '../src/hot/memory';
import { PAGE_SIZE, PageHasher } from '../src/hot/pagehash';
import { best, compileC, machine, runJson, table, writeResult } from './native';

interface CResult { 'c-xxh64+zero': number; 'lib-xxh64': number; 'lib-xxh64+zero': number; 'lib-xxh3': number; agree: boolean }

function xxhsumBench(variant: number, name: string): number | undefined {
  // xxhsum prints its benchmark (with \r progress updates) on stderr.
  const r = spawnSync('xxhsum', [`-b${variant}`, '-i3', '-q'], { encoding: 'utf8' });
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const re = new RegExp(`#${name}\\s*:[^(]*\\(\\s*([\\d.]+) MB/s\\)`, 'g');
  let last: number | undefined;
  for (let m = re.exec(text); m; m = re.exec(text)) last = Number(m[1]) / 1000;
  return last;
}

function main(): void {
  const sets = [{ label: '64 MiB', pages: 16384, rounds: 15 }, { label: '1 MiB', pages: 256, rounds: 400 }];
  const maxPages = 16384;
  const mem = new HotMemory({ scratchBytes: 2 << 20, guestRegions: [{ gpa: 0x1_0000_0000n, size: maxPages * PAGE_SIZE }] });
  const hasher = new PageHasher(mem, { maxPages });
  const base = mem.guestBase;
  for (let off = 0; off < maxPages * PAGE_SIZE; off += 1 << 20) mem.u8.set(crypto.randomBytes(1 << 20), base + off);
  for (let i = 0; i < maxPages; i += 10) mem.u8.fill(0, base + i * PAGE_SIZE, base + (i + 1) * PAGE_SIZE);
  const bin = compileC('pagehash', ['-l:libxxhash.so.0']);
  const xxhsum64 = xxhsumBench(3, 'XXH64');
  const xxhsum3 = xxhsumBench(5, 'XXH3_64b');
  const results: Record<string, unknown> = { machine: machine(), unit: 'GB/s', sets: {} };
  console.log('page hashing, 4 KiB pages, GB/s (best of N)');
  for (const s of sets) {
    const bytes = s.pages * PAGE_SIZE;
    hasher.hashPages(base, s.pages); // warm-up / tier-up
    const as = bytes / best(s.rounds, () => hasher.hashPages(base, s.pages)) / 1e9;
    const c = runJson<CResult>(bin, [String(s.pages), String(s.rounds)]);
    const { agree, ...native } = c;
    const r: Record<string, number | undefined> = {
      'as-xxh64+zero': as, ...native, 'xxhsum-b XXH64': xxhsum64, 'xxhsum-b XXH3': xxhsum3,
    };
    const ratios = {
      'as / c-xxh64+zero': as / c['c-xxh64+zero'],
      'as / lib-xxh64': as / c['lib-xxh64'],
      'as / lib-xxh64+zero': as / c['lib-xxh64+zero'],
      'as / xxhsum-b XXH64': xxhsum64 ? as / xxhsum64 : undefined,
    };
    (results.sets as Record<string, unknown>)[s.label] = { gbps: r, ratios, cAgreesWithLib: agree };
    console.log(`\n${s.label} (${s.pages} pages)`);
    console.log(table(Object.entries(r).map(([k, v]) => [k, v === undefined ? 'n/a' : v.toFixed(2), ''])));
    console.log(table(Object.entries(ratios).map(([k, v]) => [k, v === undefined ? 'n/a' : v.toFixed(2) + '×', ''])));
  }
  console.log(`\nwrote ${writeResult('hot-pagehash', results)}`);
}

main();
