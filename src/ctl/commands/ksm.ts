/**
 * `kata-ctl ksm [--json]`: host KSM (/sys/kernel/mm/ksm): state, scan pace
 * (what the ksm_throttler set), pages merged and the memory saved, and per
 * sandbox the VMM's merged pages (/proc/<pid>/ksm_stat). KSM missing: one
 * clear message, exit 1.
 */
import type { CtlCommand } from '../command';
import { ctlConfig, printJson, JSON_OPTION, type GlobalArgs } from '../common';
import { processKsm, readKsm } from '../../resource/memory/ksm';
import { errorMessage } from '../../common/errors';
import { listSandboxes } from '../sandboxes';
import { formatMiB as mib } from '../../common/units';

interface KsmArgs extends GlobalArgs {
  json: boolean;
}

export const ksmCommand: CtlCommand<KsmArgs> = {
  command: 'ksm',
  describe: 'host KSM: pages merged, memory saved, per sandbox',
  builder: (y) => y.option('json', JSON_OPTION) as never,
  handler: async (argv) => {
    let k;
    try {
      k = readKsm();
    } catch (err) {
      process.stderr.write(`kata-ctl: ${errorMessage(err)}\n`);
      return 1;
    }
    const rows = listSandboxes(ctlConfig(argv).runtime.run_dir).filter((r) => r.status === 'running');
    const per = rows.map((r) => {
      const p = r.vmPids.map((pid) => processKsm(pid)).filter((x) => x !== undefined);
      return { sandbox: r.id, mergingPages: p.reduce((a, x) => a + x!.mergingPages, 0), zeroPages: p.reduce((a, x) => a + x!.zeroPages, 0) };
    });
    if (argv.json) {
      printJson({ schemaVersion: 1, ...k, sandboxes: per });
      return 0;
    }
    process.stdout.write(`KSM ${k.run === 1 ? 'running' : k.run === 0 ? 'stopped' : `run=${k.run}`}: ${k.pagesToScan} pages every ${k.sleepMillisecs} ms, ${k.fullScans} full scans\n`);
    process.stdout.write(`merged: ${k.pagesShared} pages kept for ${k.pagesSharing} more mappings (+${k.zeroPages} zero pages): saving ${mib(k.savingBytes)}\n`);
    for (const p of per) process.stdout.write(`  ${p.sandbox}: VMM pages merged ${p.mergingPages} (${mib(p.mergingPages * 4096)})\n`);
    return 0;
  },
};
