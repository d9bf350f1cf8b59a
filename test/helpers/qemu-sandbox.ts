/**
 * One QEMU sandbox for an integration suite, set up and torn down the same
 * way everywhere: a private run directory, a writable copy of the busybox
 * rootfs, the test configuration, QEMU chosen explicitly (these suites test
 * QEMU's hotplug, slots and PCI paths), the sandbox started; at the end the
 * sandbox stopped and nothing left behind (no QEMU, no sandbox directory).
 */
import * as path from 'node:path';
import { configureLogging } from '../../src/common/log';
import type { Config } from '../../src/runtime/config';
import { selectHypervisor } from '../../src/hypervisor';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { Sandbox, type SandboxOptions } from '../../src/runtime/sandbox';
import { copyBusyboxRootfs, expectNothingLeft, requireGuest, testConfig, testRunDir } from './guest';

export interface QemuTestSandbox {
  runDir: string;
  /** A writable busybox rootfs under runDir, for the suite's containers. */
  rootfs: string;
  config: Config;
  hv: QemuHypervisor;
  sandbox: Sandbox;
}

export interface QemuTestSandboxOptions {
  /** A run directory the suite already made (to put its own files in first). */
  runDir?: string;
  /** Changes to the test configuration before the hypervisor is chosen. */
  configure?: (cfg: Config) => void;
  /** Sandbox options beyond id, config and hypervisor; bootContainers may name the rootfs. */
  sandbox?: (rootfs: string) => Partial<SandboxOptions>;
}

/**
 * Skips (or fails under CI=true) when the guest is not built; otherwise
 * boots the sandbox. Logging is silenced: the suites assert on results.
 */
export async function startQemuSandbox(ctx: Mocha.Context, id: string, opts: QemuTestSandboxOptions = {}): Promise<QemuTestSandbox> {
  requireGuest(ctx);
  configureLogging({ silent: true });
  const runDir = opts.runDir ?? testRunDir();
  const rootfs = copyBusyboxRootfs(path.join(runDir, 'rootfs'));
  const config = testConfig(runDir);
  opts.configure?.(config);
  const hv = (await selectHypervisor(config, 'qemu')).hv as QemuHypervisor;
  const sandbox = new Sandbox({ bootContainers: [], ...opts.sandbox?.(rootfs), id, config, hypervisor: hv });
  try {
    await sandbox.start();
  } catch (err) {
    // A boot that failed half way still has a QEMU or a sandbox dir to remove.
    await sandbox.stop().catch(() => undefined);
    throw err;
  }
  return { runDir, rootfs, config, hv, sandbox };
}

/** Stops the sandbox (when one started) and checks that nothing is left under its run directory. */
export async function stopQemuSandbox(t: QemuTestSandbox | undefined): Promise<void> {
  if (!t) return;
  await t.sandbox.stop();
  expectNothingLeft(t.runDir);
}
