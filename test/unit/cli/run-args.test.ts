/**
 * `kata-ts run`'s fast-path parser (src/cli/run-args.ts) against yargs: for
 * every command line it accepts, it must produce what yargs produces; every
 * line it is unsure of goes to yargs (undefined).
 */
import { expect } from 'chai';
import yargs from 'yargs';
import { buildCli } from '../../../src/cli/kata-ts';
import { imageCommand } from '../../../src/cli/image';
import { fastParseRun, GLOBAL_OPTIONS, RUN_OPTIONS, type RunArgs } from '../../../src/cli/run-args';

/** run's options as yargs parses `flags` (the action is not run). */
async function viaYargs(flags: string[]): Promise<Record<string, unknown>> {
  let got: RunArgs | undefined;
  await buildCli(yargs(flags), async (a) => { got = a; }, () => undefined, imageCommand).parseAsync();
  expect(got, `yargs did not reach run for ${flags.join(' ')}`).to.not.equal(undefined);
  return pick(got!);
}

function pick(a: RunArgs): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of [...Object.keys(GLOBAL_OPTIONS), ...Object.keys(RUN_OPTIONS)]) out[k] = (a as unknown as Record<string, unknown>)[k];
  const cmd = a.cmd ?? [];
  out.cmd = cmd.length ? cmd.map(String) : undefined;
  return out;
}

describe('unit: cli/run-args (kata-ts run without yargs)', () => {
  const same: string[][] = [
    ['run'],
    ['run', 'echo', 'hi'],
    ['--config', '/etc/x.toml', 'run'],
    ['--debug', 'run', '--log-level', 'info'],
    ['--log-level=debug', 'run', '--memory', '512', '--cpus', '2'],
    ['run', '-m', '256', '-e', 'A=1', 'B=2', '-e', 'C=3', '-w', '/tmp', '-u', '1000:1000'],
    ['run', '--rootfs', '/r', '--rootfs-share', 'erofs', '--hypervisor', 'qemu', '-t', '--read-only'],
    ['run', '--image=busybox', '--name', 'n1', '--hostname', 'h', '--policy', '/p.json'],
    ['run', '-v', '/a:/b', '/c:/d:ro', '--net', 'host-netns', '/run/netns/x', '--dns', '1.1.1.1'],
    ['run', '--bundle', '/b', '--tty', 'sh'],
    ['run', '--net', 'none', '--memory=300'],
  ];
  for (const flags of same) {
    it(`parses like yargs: ${flags.join(' ')}`, async () => {
      const fast = fastParseRun(flags);
      expect(fast, 'fast path gave up').to.not.equal(undefined);
      expect(pick(fast!)).to.deep.equal(await viaYargs(flags));
    });
  }

  const unsure: string[][] = [
    ['run', '--help'], ['--help'], ['-h', 'run'], ['image', 'ls'], [], ['run', '--no-tty'], ['run', '-it'],
    ['run', '--tty', 'false'], ['run', '--tty=true'], ['run', '--env=A=1'], ['run', '--memory', 'lots'],
    ['run', '--memory', '10'], ['run', '--cpus', '1.5'], ['run', '--hypervisor', 'xen'], ['run', '--name', 'a', '--name', 'b'],
    ['run', 'echo', '42'], ['run', '--unknown'], ['--rootfs', '/r', 'run'], ['run', '-e'], ['run', '--workdir'], ['exec', 'x'],
  ];
  for (const flags of unsure) {
    it(`leaves to yargs: ${flags.join(' ') || '(nothing)'}`, () => {
      expect(fastParseRun(flags)).to.equal(undefined);
    });
  }
});
