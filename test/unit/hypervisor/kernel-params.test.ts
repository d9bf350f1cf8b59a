/**
 * The guest kernel command line every VM gets (baseKernelParams), as QEMU
 * receives it: a panic ends the VM (panic=-1 and QEMU's -no-reboot, which
 * test/e2e/faults.test.ts relies on), and the IO-APIC timer check is skipped
 * (no_timer_check, as Kata does): under TCG on a loaded host it panicked 2
 * of 109 soak boots at ~0.04 s with "IO-APIC + timer doesn't work!".
 */
import { expect } from 'chai';
import { QemuHypervisor } from '../../../src/hypervisor/qemu';
import { baseKernelParams, hostTscKhz, type VmConfig } from '../../../src/hypervisor/hypervisor';

describe('guest kernel command line', () => {
  const cfg = {
    id: 'k', dir: '/nonexistent/vm', kernel: '/nonexistent/vmlinux', image: '/nonexistent/rootfs.erofs',
    vcpus: 1, memoryMiB: 128, kernelParams: 'agent.debug_console', debug: false, disks: [], shares: [],
  } as unknown as VmConfig;

  it('skips the IO-APIC timer check and reboots (so QEMU ends) on panic, debug or not', () => {
    for (const debug of [false, true]) {
      const words = baseKernelParams(debug).split(' ');
      expect(words).to.include.members(['no_timer_check', 'panic=-1']);
    }
  });

  it('QEMU gets those words, then the sandbox\'s own, and -no-reboot', () => {
    const args = new QemuHypervisor({ binary: '/bin/false', machine: 'pc', accel: 'tcg', blockDriver: 'virtio-blk' }).commandLine(cfg);
    const append = args[args.indexOf('-append') + 1]!.split(' ');
    expect(append).to.include.members(['no_timer_check', 'panic=-1']);
    expect(append[append.length - 1]).to.equal('agent.debug_console');
    expect(args).to.include('-no-reboot');
  });

  it('routes PCI interrupts without ACPI (acpi=noirq) on i440fx only: not on q35, microvm or without a machine', () => {
    for (const m of ['pc', 'pc-i440fx-7.2', 'pc,nvdimm=on']) expect(baseKernelParams(false, m).split(' '), m).to.include('acpi=noirq');
    for (const m of ['q35', 'pc-q35-7.2', 'microvm', undefined]) expect(baseKernelParams(false, m).split(' '), String(m)).to.not.include('acpi=noirq');
    const append = (machine: 'pc' | 'q35') => {
      const args = new QemuHypervisor({ binary: '/bin/false', machine, accel: 'tcg', blockDriver: 'virtio-blk' }).commandLine(cfg);
      return args[args.indexOf('-append') + 1]!.split(' ');
    };
    expect(append('pc')).to.include('acpi=noirq');
    expect(append('q35')).to.not.include('acpi=noirq');
  });

  it('gives microvm guests the TSC frequency (no HPET/PM timer there: PIT calibration fails under load and boot stops), and no other machine', () => {
    expect(hostTscKhz('processor\t: 0\ncpu MHz\t\t: 2596.148\ncache size\t: 1 KB\n')).to.equal(2596148);
    expect(hostTscKhz('processor\t: 0\n')).to.equal(undefined);
    expect(hostTscKhz('cpu MHz\t: 0.000\n')).to.equal(undefined);
    const host = hostTscKhz();
    if (host === undefined) throw new Error('this host\'s /proc/cpuinfo has no cpu MHz line');
    expect(baseKernelParams(false, 'microvm').split(' ')).to.include(`tsc_early_khz=${host}`);
    expect(baseKernelParams(false, 'microvm,accel=tcg').split(' ')).to.include(`tsc_early_khz=${host}`);
    for (const m of ['pc', 'q35', undefined]) expect(baseKernelParams(false, m), String(m)).to.not.match(/tsc_early_khz/);
  });
});
