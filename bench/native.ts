/**
 * Helpers shared by the hot-path benchmarks: compile a C peer from bench/c
 * with gcc -O2 at bench time (cached under build/bench by source mtime), run
 * it, time JS loops, and write results as JSON.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';

/** Repo root from dist/bench/*.js or bench/*.ts. */
export const ROOT = fs.existsSync(path.resolve(__dirname, '..', 'package.json'))
  ? path.resolve(__dirname, '..')
  : path.resolve(__dirname, '..', '..');

export function compileC(name: string, libs: string[] = []): string {
  const src = path.join(ROOT, 'bench', 'c', `${name}.c`);
  const out = path.join(ROOT, 'build', 'bench', name);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  if (!fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(src).mtimeMs) {
    execFileSync('gcc', ['-O2', '-Wall', '-o', out, src, ...libs], { stdio: 'inherit' });
  }
  return out;
}

export function runJson<T>(bin: string, args: string[]): T {
  return JSON.parse(execFileSync(bin, args, { encoding: 'utf8' })) as T;
}

/** Best-of-`rounds` seconds for fn(). */
export function best(rounds: number, fn: () => void): number {
  let b = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t = process.hrtime.bigint();
    fn();
    const s = Number(process.hrtime.bigint() - t) / 1e9;
    if (s < b) b = s;
  }
  return b;
}

export function machine(): Record<string, unknown> {
  return { cpu: os.cpus()[0]?.model, cores: os.cpus().length, node: process.version, gcc: execFileSync('gcc', ['-dumpfullversion'], { encoding: 'utf8' }).trim() };
}

export function writeResult(name: string, result: unknown): string {
  const file = path.join(ROOT, 'build', 'bench', `${name}.json`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  return file;
}

export function table(rows: Array<[string, string, string]>): string {
  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.max(...rows.map((r) => r[1].length));
  return rows.map((r) => `  ${r[0].padEnd(w0)}  ${r[1].padStart(w1)}  ${r[2]}`).join('\n');
}
