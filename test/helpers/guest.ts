/**
 * Shared helpers for tests that boot real VMs: where the guest assets are,
 * a private run directory per test run, a gate that skips (with the reason
 * printed) when the guest was not built, and a check that nothing was left
 * behind (qemu processes, sandbox dirs).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { expect } from 'chai';
import { PassThrough } from 'node:stream';
import { defaultConfig, guestAssets, type Config } from '../../src/runtime/config';
import type { AgentClient } from '../../src/runtime/agent-client';
import { attachProcess } from '../../src/runtime/stdio';
import { skipOrFail } from './skip';

export const REPO = path.resolve(__dirname, '..', '..', '..');
export const CACHE = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';

export function guestAvailable(): string | undefined {
  for (const f of [path.join(CACHE, 'kernel', 'vmlinux'), path.join(CACHE, 'image', 'rootfs.erofs'), path.join(CACHE, 'rootfs', 'busybox', 'bin', 'busybox')]) {
    if (!fs.existsSync(f)) return `guest asset ${f} missing (run scripts/setup.sh)`;
  }
  if (!fs.existsSync('/usr/bin/qemu-system-x86_64')) return 'qemu-system-x86_64 not installed';
  return undefined;
}

/** Skip the suite, saying why, when VMs cannot boot here: set-up builds the
 * guest and installs QEMU, so under CI=true this fails instead (skip.ts). */
export function requireGuest(ctx: Mocha.Context): void {
  const why = guestAvailable();
  if (why) skipOrFail(ctx, why);
}

export function testRunDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-test-run-'));
}

/** A writable copy of the cached busybox rootfs at `dest` (a container rootfs the test may change). */
export function copyBusyboxRootfs(dest: string): string {
  fs.cpSync(path.join(CACHE, 'rootfs', 'busybox'), dest, { recursive: true, verbatimSymlinks: true });
  return dest;
}

export function testConfig(runDir: string): Config {
  const c = defaultConfig();
  c.runtime.run_dir = runDir;
  c.runtime.cache_dir = CACHE;
  c['agent.kata'].dial_timeout = 120;
  return c;
}

/** QEMU processes started for sandboxes under runDir (matched by their -pidfile path). */
export function leftoverQemu(runDir: string): string[] {
  try {
    const out = execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' });
    return out.split('\n').filter((l) => l.includes('qemu-system') && l.includes(runDir));
  } catch {
    return [];
  }
}

export function writeTestConfig(runDir: string, extra = ''): string {
  const f = path.join(runDir, 'configuration.toml');
  fs.writeFileSync(f, `[runtime]\nrun_dir = "${runDir}"\ncache_dir = "${CACHE}"\n[agent.kata]\ndial_timeout = 120\n${extra}`);
  return f;
}

/** End of a VM suite: no QEMU and no sandbox directory left under runDir; then remove it. */
export function expectNothingLeft(runDir: string): void {
  expect(leftoverQemu(runDir), 'qemu left running').to.deep.equal([]);
  const sandboxes = path.join(runDir, 'sandboxes');
  expect(fs.existsSync(sandboxes) ? fs.readdirSync(sandboxes) : [], 'sandbox dirs left').to.deep.equal([]);
  fs.rmSync(runDir, { recursive: true, force: true });
}

/** Waits for a process in the guest to end: its status and its stdout and stderr, interleaved as they came. */
export async function collectOutput(agent: AgentClient, cid: string, execId: string): Promise<{ status: number; out: string }> {
  const out = new PassThrough();
  let o = '';
  out.on('data', (d) => (o += d));
  const st = await attachProcess(agent, cid, execId, { stdout: out, stderr: out, terminal: false }).done;
  return { status: st.status, out: o };
}

/**
 * Pinned copies of the guest kernel and image in `dir`, as `[hypervisor.qemu]`
 * lines for a test's configuration: a guest image rebuilt while the suite
 * runs (another suite, set-up) must not make its VM template stale. `dax`
 * also copies the DAX image beside the image, so the pinned guest boots as
 * the default configuration does (without it, an explicit image with no
 * rootfs-dax.erofs beside it is a virtio-blk root disk).
 */
export function pinGuestAssets(dir: string, opts: { dax?: boolean } = {}): string {
  const assets = guestAssets(testConfig(dir), 'qemu');
  const kernel = path.join(dir, 'vmlinux');
  const image = path.join(dir, 'rootfs.erofs');
  fs.copyFileSync(assets.kernel, kernel);
  fs.copyFileSync(assets.image, image);
  const dax = path.join(path.dirname(assets.image), 'rootfs-dax.erofs');
  if (opts.dax && fs.existsSync(dax)) fs.copyFileSync(dax, path.join(dir, 'rootfs-dax.erofs'));
  return `[hypervisor.qemu]\nkernel = "${kernel}"\nimage = "${image}"\n`;
}
