/**
 * What the kept corpus reaches: replays test/fuzz/corpus through each target
 * under V8 block coverage (node:inspector, Profiler.startPreciseCoverage)
 * and prints, for the parser files a target exists for, the share of
 * functions entered and of code bytes run (the compiled JavaScript in dist/,
 * so WebAssembly in assembly/ is not measured here — its callers are).
 *
 *   node dist/test/fuzz/coverage.js [target ...]   (one process per target)
 */
import * as inspector from 'node:inspector';
import * as path from 'node:path';
import type { Target } from './engine';

/** The source files each target is about (dist/src relative paths, .js). */
const FILES: Record<string, string[]> = {
  'virtqueue-split': ['hot/virtqueue.js'],
  'virtqueue-packed': ['hot/virtqueue.js'],
  'vhost-user': ['vhost-user/protocol.js', 'vhost-user/backend.js'],
  fuse: ['virtio/fs/wire.js', 'virtio/fs/server.js'],
  vsock: ['virtio/vsock/packet.js', 'virtio/vsock/device.js'],
  erofs: ['hot/erofs.js'],
  lz4: ['hot/lz4.js'],
  ttrpc: ['protocols/ttrpc/frame.js', 'protocols/ttrpc/messages.js'],
  protobuf: ['protocols/protobuf/codec.js'],
  oci: ['protocols/oci.js'],
  toml: ['common/toml.js'],
  netlink: ['protocols/netlink/message.js', 'protocols/netlink/route.js'],
};

interface Range { startOffset: number; endOffset: number; count: number }
interface FnCov { functionName: string; ranges: Range[]; isBlockCoverage: boolean }
interface ScriptCov { url: string; functions: FnCov[] }

function post<T>(s: inspector.Session, method: string, params?: object): Promise<T> {
  return new Promise((resolve, reject) => s.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res as T))));
}

/**
 * Functions entered, and the share of code bytes run: each function's
 * ranges (its own first, then blocks not run or run a different number of
 * times) painted largest first, so the innermost range decides a byte.
 */
function coveredBytes(fns: FnCov[]): { covered: number; total: number; fnsHit: number; fns: number } {
  const marks: Range[] = [];
  let fnsHit = 0, nfns = 0;
  for (const f of fns) {
    if (f.ranges.length === 0 || f.ranges[0]!.startOffset === 0) continue; // the module wrapper
    nfns++;
    if (f.ranges[0]!.count > 0) fnsHit++;
    marks.push(...f.ranges);
  }
  const size = Math.max(0, ...marks.map((m) => m.endOffset));
  const state = new Int8Array(size); // 0 not code, 1 not run, 2 run
  for (const m of [...marks].sort((a, b) => (b.endOffset - b.startOffset) - (a.endOffset - a.startOffset))) state.fill(m.count > 0 ? 2 : 1, m.startOffset, m.endOffset);
  let covered = 0, total = 0;
  for (let i = 0; i < size; i++) { if (state[i]) total++; if (state[i] === 2) covered++; }
  return { covered, total, fnsHit, fns: nfns };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.length !== 1) {
    // One process per target: V8 reports the functions of a script loaded
    // after coverage started, and a reset (take) drops the ones not run
    // since, so targets must not share a process.
    const { execFileSync } = require('node:child_process') as typeof import('node:child_process');
    const { TARGETS } = require('./targets') as typeof import('./targets');
    const names = args.length ? args : TARGETS.map((t) => t.name);
    process.stdout.write('target             inputs  file                               functions      code bytes\n');
    for (const n of names) process.stdout.write(execFileSync(process.execPath, [__filename, n], { encoding: 'utf8' }).split('\n').slice(1).join('\n'));
    return;
  }
  const s = new inspector.Session();
  s.connect();
  await post(s, 'Profiler.enable');
  await post(s, 'Profiler.startPreciseCoverage', { callCount: true, detailed: true });
  // Loaded after coverage starts, so functions never called are reported too.
  /* eslint-disable @typescript-eslint/no-require-imports */
  const { configureLogging } = require('../../src/common/log') as typeof import('../../src/common/log');
  const { readCorpus } = require('./engine') as typeof import('./engine');
  const { TARGETS, targetByName } = require('./targets') as typeof import('./targets');
  configureLogging({ silent: true });
  void TARGETS;
  const targets: Target[] = args.map(targetByName);
  const distSrc = path.resolve(__dirname, '..', '..', 'src');
  process.stdout.write('target             inputs  file                               functions      code bytes\n');
  for (const t of targets) {
    const corpus = readCorpus(t.name);
    for (const { data } of corpus) {
      try { const r = t.run(data); if (r instanceof Promise) await r; } catch { /* outcomes are the replay test's business */ }
    }
    const { result } = await post<{ result: ScriptCov[] }>(s, 'Profiler.takePreciseCoverage');
    for (const f of FILES[t.name] ?? []) {
      const url = `file://${path.join(distSrc, f)}`;
      const sc = result.find((r) => r.url === url);
      if (!sc) { process.stdout.write(`${t.name.padEnd(18)} ${String(corpus.length).padStart(6)}  ${f.padEnd(34)} (not loaded)\n`); continue; }
      const c = coveredBytes(sc.functions);
      process.stdout.write(`${t.name.padEnd(18)} ${String(corpus.length).padStart(6)}  ${f.padEnd(34)} ${`${c.fnsHit}/${c.fns}`.padStart(9)} ${((100 * c.covered) / Math.max(1, c.total)).toFixed(0).padStart(8)}%\n`);
    }
  }
  await post(s, 'Profiler.stopPreciseCoverage');
  s.disconnect();
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exitCode = 1;
});
