/**
 * `kata-ctl direct-volume add|remove|stats|resize --volume-path PATH`, as
 * Kata's: register a block volume (mountInfo.json: volume-type, device,
 * fstype, metadata, options) under the host path a container will mount, so
 * the runtime hands the device to the VM instead of sharing the path; read
 * its usage from the guest; grow it online. The registry is
 * src/resource/volumes/direct-volume.ts ($KATA_TS_DIRECT_VOLUMES_ROOT, else
 * /run/kata-containers/shared/direct-volumes). stats and resize reach the
 * sandbox recorded as using the volume through its owner's ctl channel.
 */
import type { CtlCommand } from '../command';
import { ctlConfig, printJson, JSON_OPTION, type GlobalArgs } from '../common';
import { errorMessage } from '../../common/errors';
import { DirectVolumeError, DirectVolumeStore } from '../../resource/volumes/direct-volume';
import { directVolumeGuestPath } from '../../runtime/direct-volumes';
import { dialSandboxAgent } from '../../runtime/ctl-channel';
import { listSandboxes, type SandboxRow } from '../sandboxes';
import type { VolumeStatsResponse } from '../../protocols/agent-api';

const ACTIONS = ['add', 'remove', 'stats', 'resize'] as const;

interface DirectVolumeArgs extends GlobalArgs {
  action: (typeof ACTIONS)[number];
  volumePath: string;
  mountInfo?: string;
  size?: string;
  json: boolean;
}

/** The running sandbox that uses the volume; one error when none does. */
function ownerOf(store: DirectVolumeStore, volumePath: string, runDir: string): SandboxRow {
  store.require(volumePath);
  const ids = store.sandboxesOf(volumePath);
  const rows = listSandboxes(runDir).filter((r) => ids.includes(r.id) && r.status === 'running');
  if (!rows.length) throw new DirectVolumeError('not-found', `direct volume ${volumePath} is not used by a running sandbox${ids.length ? ` (recorded: ${ids.join(', ')}, none running)` : ''}`);
  return rows[0];
}

function parseSize(s: string | undefined): number {
  const m = /^(\d+)([KMGT]i?)?$/.exec(String(s ?? ''));
  const mult: Record<string, number> = { '': 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4 };
  const n = m ? Number(m[1]) * mult[m[2] ?? ''] : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new DirectVolumeError('invalid', `--size ${JSON.stringify(s)}: expected bytes (a whole number, optional K/M/G/T or Ki/Mi/Gi/Ti suffix)`);
  return n;
}

export const directVolumeCommand: CtlCommand<DirectVolumeArgs> = {
  command: 'direct-volume <action>',
  describe: 'direct-assigned block volumes: add | remove | stats | resize --volume-path PATH',
  builder: (y) => y
    .positional('action', { choices: ACTIONS, demandOption: true, describe: 'add (needs --mount-info), remove, stats, resize (needs --size)' })
    .option('volume-path', { type: 'string', demandOption: true, describe: 'the host path containers name as the mount source' })
    .option('mount-info', { type: 'string', describe: 'add: Kata mountInfo JSON {"volume-type":"block","device":…,"fstype":"ext4"|"erofs","metadata":{},"options":[]}' })
    .option('size', { type: 'string', describe: 'resize: new size in bytes (K/M/G/T, Ki/Mi/Gi/Ti suffixes)' })
    .option('json', JSON_OPTION) as never,
  handler: async (argv) => {
    const store = new DirectVolumeStore();
    const vp = argv.volumePath;
    try {
      switch (argv.action) {
        case 'add': {
          if (argv.mountInfo === undefined) throw new DirectVolumeError('invalid', 'add needs --mount-info JSON');
          const info = store.add(vp, argv.mountInfo);
          if (argv.json) printJson({ schemaVersion: 1, volumePath: vp, mountInfo: info });
          else process.stdout.write(`direct volume ${vp}: ${info.device} (${info.fstype}) registered\n`);
          return 0;
        }
        case 'remove': {
          const running = new Set(listSandboxes(ctlConfig(argv).runtime.run_dir).filter((r) => r.status === 'running').map((r) => r.id));
          store.remove(vp, (id) => running.has(id));
          if (!argv.json) process.stdout.write(`direct volume ${vp} removed\n`);
          return 0;
        }
        case 'stats':
        case 'resize': {
          const size = argv.action === 'resize' ? parseSize(argv.size) : 0;
          const row = ownerOf(store, vp, ctlConfig(argv).runtime.run_dir);
          const agent = dialSandboxAgent(row.dir);
          if (!agent) throw new DirectVolumeError('not-found', `sandbox ${row.id} serves no ctl channel`);
          try {
            const guestPath = directVolumeGuestPath(vp);
            if (argv.action === 'resize') {
              await agent.resizeVolume(guestPath, size);
              if (!argv.json) process.stdout.write(`direct volume ${vp} resized to ${size} bytes (sandbox ${row.id})\n`);
              return 0;
            }
            const st: VolumeStatsResponse = await agent.volumeStats(guestPath);
            if (argv.json) printJson({ schemaVersion: 1, volumePath: vp, sandbox: row.id, ...st });
            else for (const u of st.usage) process.stdout.write(`${u.unit}: total ${u.total}, used ${u.used}, available ${u.available}\n`);
            return 0;
          } finally {
            agent.close();
          }
        }
      }
    } catch (err) {
      process.stderr.write(`kata-ctl: direct-volume ${argv.action}: ${errorMessage(err)}\n`);
      return 1;
    }
  },
};
