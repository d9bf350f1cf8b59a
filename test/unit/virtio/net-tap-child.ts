/**
 * Child of net-tap.test.ts, run inside a fresh network namespace
 * (`unshare --net`): a tap in that namespace, 10.99.0.1/24 on it, the test
 * guest on the builtin VMM sends an ARP request through virtio-net and the
 * host kernel's reply comes back through the tap. Prints one JSON line.
 * The namespace (and any tap left in it) dies with this process; the tap is
 * also closed, and removed, explicitly.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { NetDevice } from '../../../src/virtio/net/device';
import { TapBackend } from '../../../src/virtio/net/tap';
import { runGuest } from '../vmm/helpers';

async function main(): Promise<void> {
  const tap = new TapBackend('kts%d');
  const ip = (...a: string[]) => execFileSync('ip', a, { stdio: 'pipe' }).toString();
  try { fs.writeFileSync(`/proc/sys/net/ipv6/conf/${tap.name}/disable_ipv6`, '1'); } catch { /* no IPv6: fine */ }
  ip('addr', 'add', '10.99.0.1/24', 'dev', tap.name);
  ip('link', 'set', tap.name, 'up');
  const dev = new NetDevice({ backend: tap, mac: '02:00:00:00:99:02' });
  const r = await runGuest('net', { devices: [dev], extra: 'arp', keep: true });
  const stats = { ...tap.stats };
  const neigh = ip('neigh', 'show', 'dev', tap.name);
  r.machine.close(); // → NetDevice.close → TapBackend.close: a non-persistent tap goes away with its fd
  let gone = false;
  try { ip('link', 'show', tap.name); } catch { gone = true; }
  process.stdout.write(JSON.stringify({ name: tap.name, out: r.out, ms: r.ms, stats, metrics: dev.metrics, neigh, gone }) + '\n');
}

main().then(() => process.exit(0), (err) => { process.stdout.write(JSON.stringify({ error: String(err?.stack ?? err) }) + '\n'); process.exit(1); });
