/**
 * Page hashing GB/s, side by side in one run (issue 3): assembly/hash
 * (XXH64 + fused zero-page test, through src/hot/pagehash) vs native XXH64 —
 * our C build of the same algorithm, Debian's libxxhash (hash only and with a
 * separate zero scan) and `xxhsum -b` — with libxxhash XXH3 for context.
 * Two working sets: 64 MiB (a guest RAM scan, memory-bound) and 1 MiB
 * (in cache, comparable with `xxhsum -b`'s 100 KB sample). JS peers, XXH64
 * of every 4 KiB page of the same memory, one call per page (their API):
 *   xxhash-wasm  h64Raw(page)                          (hand-written WASM)
 *   hash-wasm    createXXHash64(): init/update/digest   (C compiled to WASM)
 * Both are bench-only devDependencies (package.json cannot carry a comment):
 * the runtime never loads them. One that fails to load is left out and the
 * output says why. Their fingerprints are checked against ours.
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

interface XxhashWasm { h64Raw(b: Uint8Array, seed?: bigint): bigint }
interface HashWasmHasher { init(): HashWasmHasher; update(b: Uint8Array): HashWasmHasher; digest(f: 'hex'): string }

async function jsPeers(): Promise<{ fns: Record<string, (page: Uint8Array) => bigint>; absent: string[] }> {
  const fns: Record<string, (page: Uint8Array) => bigint> = {};
  const absent: string[] = [];
  const why = (name: string, e: unknown) => `${name} left out: it does not load on node ${process.version} (${(e as Error).message.split('\n')[0]})`;
  try {
    const x = await (require('xxhash-wasm') as () => Promise<XxhashWasm>)();
    fns['xxhash-wasm'] = (page) => x.h64Raw(page, 0n);
  } catch (e) { absent.push(why('xxhash-wasm', e)); }
  try {
    const h = await (require('hash-wasm') as { createXXHash64(): Promise<HashWasmHasher> }).createXXHash64();
    fns['hash-wasm'] = (page) => BigInt('0x' + h.init().update(page).digest('hex'));
  } catch (e) { absent.push(why('hash-wasm', e)); }
  return { fns, absent };
}

async function main(): Promise<void> {
  const peers = await jsPeers();
  for (const w of peers.absent) console.log(w);
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
    const js: Record<string, number> = {};
    const ours = hasher.hashPages(base, s.pages).hashes.slice();
    for (const [name, fn] of Object.entries(peers.fns)) {
      const pages = Array.from({ length: s.pages }, (_, i) => mem.u8.subarray(base + i * PAGE_SIZE, base + (i + 1) * PAGE_SIZE));
      for (let i = 0; i < s.pages; i += 97) if (fn(pages[i]) !== ours[i]) throw new Error(`${name} disagrees with ours on page ${i}`);
      const run = () => { for (const pg of pages) fn(pg); };
      run();
      js[name] = bytes / best(Math.max(3, s.rounds >> 2), run) / 1e9;
    }
    const { agree, ...native } = c;
    const r: Record<string, number | undefined> = {
      'as-xxh64+zero': as, ...native, 'xxhsum-b XXH64': xxhsum64, 'xxhsum-b XXH3': xxhsum3, ...js,
    };
    const ratios: Record<string, number | undefined> = {
      'as / c-xxh64+zero': as / c['c-xxh64+zero'],
      'as / lib-xxh64': as / c['lib-xxh64'],
      'as / lib-xxh64+zero': as / c['lib-xxh64+zero'],
      'as / xxhsum-b XXH64': xxhsum64 ? as / xxhsum64 : undefined,
    };
    for (const [name, v] of Object.entries(js)) ratios[`as / ${name}`] = as / v;
    (results.sets as Record<string, unknown>)[s.label] = { gbps: r, ratios, cAgreesWithLib: agree, ...(peers.absent.length ? { absentPeers: peers.absent } : {}) };
    console.log(`\n${s.label} (${s.pages} pages)`);
    console.log(table(Object.entries(r).map(([k, v]) => [k, v === undefined ? 'n/a' : v.toFixed(2), ''])));
    console.log(table(Object.entries(ratios).map(([k, v]) => [k, v === undefined ? 'n/a' : v.toFixed(2) + '×', ''])));
  }
  console.log(`\nwrote ${writeResult('hot-pagehash', results)}`);
}

main().catch((e: Error) => { process.stderr.write(`${e.stack ?? e.message}\n`); process.exit(1); });
