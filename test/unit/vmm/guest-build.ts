/**
 * Builds the freestanding test guest (test/fixtures/vmm-guest) with gcc/ld
 * from Debian, once per process, into a temporary directory. Returns the
 * ELF path, or undefined with the reason when no compiler is installed.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

let built: { elf?: string; reason?: string } | undefined;

export function fixtureDir(): string {
  for (const up of ['../../../..', '../../..']) {
    const d = path.resolve(__dirname, up, 'test', 'fixtures', 'vmm-guest');
    if (fs.existsSync(d)) return d;
  }
  throw new Error('test/fixtures/vmm-guest not found');
}

export function buildGuest(): { elf?: string; reason?: string } {
  if (built) return built;
  const src = fixtureDir();
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-vmm-guest-'));
  process.on('exit', () => fs.rmSync(out, { recursive: true, force: true }));
  try {
    const cflags = ['-ffreestanding', '-nostdlib', '-static', '-fno-pie', '-no-pie', '-mno-red-zone', '-mgeneral-regs-only', '-O2',
      '-fno-stack-protector', '-fno-asynchronous-unwind-tables', '-fno-builtin', '-Wall'];
    execFileSync('gcc', [...cflags, '-c', path.join(src, 'guest.c'), '-o', path.join(out, 'guest.o')], { stdio: 'pipe' });
    execFileSync('gcc', ['-c', path.join(src, 'entry.S'), '-o', path.join(out, 'entry.o')], { stdio: 'pipe' });
    const elf = path.join(out, 'guest.elf');
    execFileSync('ld', ['-T', path.join(src, 'guest.ld'), '-nostdlib', '-static', '-z', 'max-page-size=0x1000',
      path.join(out, 'entry.o'), path.join(out, 'guest.o'), '-o', elf], { stdio: 'pipe' });
    built = { elf };
  } catch (err) {
    built = { reason: `cannot build the test guest (gcc/ld): ${(err as Error).message.split('\n')[0]}` };
  }
  return built;
}
