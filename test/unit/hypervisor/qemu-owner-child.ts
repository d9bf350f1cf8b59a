/**
 * Child process for the "QEMU dies with its owner" test: starts a
 * QemuHypervisor on the stand-in QEMU given as argv[2] with the VmConfig
 * JSON in argv[3] (the parent answers QMP), prints the QEMU pid, then waits
 * to be killed.
 */
import { QemuHypervisor } from '../../../src/hypervisor/qemu';
import type { VmConfig } from '../../../src/hypervisor/hypervisor';

async function main(): Promise<void> {
  const hv = new QemuHypervisor({ binary: process.argv[2], machine: 'pc', accel: 'tcg' });
  const info = await hv.start(JSON.parse(process.argv[3]) as VmConfig);
  process.stdout.write(`${info.pids[0]}\n`);
  setInterval(() => undefined, 1 << 30);
}

main().catch((err: unknown) => {
  process.stderr.write(`${String((err as Error).stack ?? err)}\n`);
  process.exit(1);
});
