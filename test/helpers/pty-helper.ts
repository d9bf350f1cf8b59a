/**
 * Builds the guest's pty helper (guest/init/kata-pty.c) for host-side tests,
 * the way guest/image/build.sh does, once per test process.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { REPO } from './guest';

let built: string | undefined;

/** Path of a freshly built kata-pty, or a reason it cannot be built/used here. */
export function buildPtyHelper(): { helper?: string; why?: string } {
  if (!fs.existsSync(path.join(REPO, 'native', 'build', 'Release', 'kata_native.node'))) return { why: 'native addon not built (scripts/setup.sh)' };
  if (built && fs.existsSync(built)) return { helper: built };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-pty-'));
  const out = path.join(dir, 'kata-pty');
  try {
    execFileSync('gcc', ['-static', '-O2', '-Wall', '-o', out, path.join(REPO, 'guest', 'init', 'kata-pty.c')], { stdio: 'pipe' });
  } catch (err) {
    return { why: `cannot build kata-pty with gcc: ${(err as Error).message.split('\n')[0]}` };
  }
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  built = out;
  return { helper: out };
}
