/**
 * The agent's warm-up before a VM template is saved (src/factory, README
 * "VM templates"). Every clone resumes the template's guest RAM, V8 heap
 * included, so code the template's agent has run is already parsed and
 * compiled in every clone. A template agent that never served an RPC left
 * each clone to compile the ttrpc server, the codec and the handlers on its
 * first calls, under TCG: ~0.35 s for the first Check alone.
 *
 * So an agent booted with TEMPLATE_WARMUP_PARAM on its kernel command line
 * (only templates are) serves a round of real RPCs to itself before it
 * says it is ready: a second RpcServer with the real handler table
 * (agentHandlers: policy gate, service, AgentSandbox) and the real codecs,
 * reached through the real ttrpc client over a unix socket in a scratch
 * directory, accepted by the same acceptLoop and FdStream as the vsock
 * connections; every other RPC's sample request goes through its codec only.
 *
 * Nothing of it may be a clone's own: the warm-up sandbox is a separate
 * AgentSandbox and PolicyGate (the real ones stay open for the clone's
 * CreateSandbox), it does not manage the host (no hostname, no sysctls),
 * its resolv.conf lives in a scratch directory removed afterwards, and it
 * creates no container. The only guest-wide effect is the loopback link
 * set up, as every CreateSandbox does anyway.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Duplex } from 'node:stream';
import { AgentSandbox } from './sandbox';
import { agentHandlers, agentRpcServer, AGENT_MAX_MESSAGE } from './service';
import { GuestNetwork } from './network';
import { PolicyGate } from './policy';
import type { OciRuntime } from './oci-runtime';
import { agentMethods, AGENT_SERVICE } from '../protocols/agent-api';
import { RpcClient } from '../protocols/ttrpc/rpc-client';
import { KataError } from '../common/errors';
import { native } from '../common/native';
import { acceptLoop, FdStream } from '../common/fd-stream';

/** The kernel parameter that marks a template boot (factory.ts TEMPLATE_KERNEL_PARAMS). */
export const TEMPLATE_WARMUP_PARAM = 'agent.warmup=1';

export function warmUpWanted(cmdline: string): boolean {
  return cmdline.split(/\s+/).includes(TEMPLATE_WARMUP_PARAM);
}

/** The warm-up starts no container (see samples()): a runtime that refuses to. */
const NO_RUNTIME: OciRuntime = {
  name: 'warm-up',
  run: () => { throw new KataError('internal', 'the warm-up starts no container'); },
  exec: () => { throw new KataError('internal', 'the warm-up starts no process'); },
  kill: async () => undefined,
  delete: async () => undefined,
  pid: async () => 0,
  version: async () => 'warm-up',
};

/** The real network code, with the DNS file in the scratch directory. */
export class WarmNetwork extends GuestNetwork {
  constructor(private readonly resolvConf: string) {
    super();
  }

  override writeResolvConf(dns: string[]): Promise<void> {
    return super.writeResolvConf(dns, this.resolvConf);
  }
}

/**
 * Sample requests, in the order a sandbox start sends them. 'ok' and
 * 'error': served by the warm-up sandbox for real, with the outcome the
 * warm-up expects (an RPC for a container that does not exist warms the
 * error path); 'codec': through the codec only, because the handler touches
 * the guest (clock, RNG, CPUs, links) or starts a process.
 *
 * The container's own RPCs are codec-only too, by measurement: a version
 * that also created, started (`/bin/true` in place of crun), waited for and
 * removed a container made the clones' CreateContainer slower, not faster
 * (107-269 ms against 58-109 ms without warm-up, 4 alternating runs each,
 * cause not found), with no clear gain on StartContainer, whose time is
 * crun's; without them CreateContainer is 74-94 against 55-58 ms.
 */
type Sample = { rpc: string; req: Record<string, unknown>; expect: 'ok' | 'error' | 'codec' };

function samples(dir: string): Sample[] {
  const spec = {
    ociVersion: '1.0.2',
    process: { args: ['/bin/true'], cwd: '/', env: ['PATH=/usr/bin:/bin', 'HOSTNAME=warm-up'], user: { uid: 0, gid: 0 }, terminal: false },
    root: { path: path.join(dir, 'rootfs'), readonly: true },
    hostname: 'warm-up',
    mounts: [{ destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] }],
    linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'ipc' }, { type: 'uts' }], resources: {}, maskedPaths: ['/proc/kcore'], readonlyPaths: ['/proc/sys'] },
  };
  const ref = { container_id: 'warm-up', exec_id: '' };
  const none = { container_id: 'warm-up-none', exec_id: '' };
  const storage = { driver: 'virtio-fs', source: 'kataShared', fstype: 'virtiofs', options: ['nodev'], mount_point: '/run/kata-containers/shared/containers/x', driver_options: [] };
  return [
    { rpc: 'Check', req: {}, expect: 'ok' },
    { rpc: 'GetGuestDetails', req: {}, expect: 'ok' },
    { rpc: 'CreateSandbox', req: { sandbox_id: 'warm-up', hostname: 'warm-up', dns: ['nameserver 127.0.0.1'], sysctls: {}, policy_json: '' }, expect: 'ok' },
    // The shapes the host really sends (an OCI spec, storages, devices).
    { rpc: 'CreateContainer', req: { ...ref, storages: [storage], oci_spec_json: JSON.stringify(spec), devices: [{ id: 'd', type: 'blk', vm_path: '/dev/vda', container_path: '/dev/x', options: [] }] }, expect: 'codec' },
    { rpc: 'StartContainer', req: { container_id: 'warm-up' }, expect: 'codec' },
    { rpc: 'StatsContainer', req: { container_id: 'warm-up-none' }, expect: 'error' },
    { rpc: 'WaitProcess', req: none, expect: 'error' },
    { rpc: 'ReadStdout', req: none, expect: 'error' },
    { rpc: 'ReadStderr', req: none, expect: 'error' },
    { rpc: 'WriteStdin', req: { ...none, data: Buffer.from('x') }, expect: 'error' },
    { rpc: 'CloseStdin', req: none, expect: 'error' },
    { rpc: 'SignalProcess', req: { ...none, signal: 15 }, expect: 'error' },
    { rpc: 'RemoveContainer', req: { container_id: 'warm-up-none', timeout: 0 }, expect: 'error' },
    { rpc: 'ListInterfaces', req: {}, expect: 'ok' },
    { rpc: 'ListRoutes', req: {}, expect: 'ok' },
    { rpc: 'GetGuestStats', req: {}, expect: 'ok' },
    { rpc: 'DestroySandbox', req: {}, expect: 'ok' },
    { rpc: 'ReseedRandomDev', req: { data: Buffer.alloc(16) }, expect: 'codec' },
    { rpc: 'SetGuestDateTime', req: { Sec: 1, Usec: 1 }, expect: 'codec' },
    { rpc: 'OnlineCPUMem', req: { wait: false, nb_cpus: 1, cpu_only: true }, expect: 'codec' },
    { rpc: 'ExecProcess', req: { ...ref, process_json: JSON.stringify(spec.process) }, expect: 'codec' },
    { rpc: 'UpdateContainer', req: { container_id: 'warm-up', resources_json: '{}' }, expect: 'codec' },
  ];
}

/** Two connected ends for the warm-up's client and server, and how to let go of them. */
type Pair = { agentEnd: Duplex; hostEnd: Duplex; stop: () => void };

/** A connected socket pair through the agent's own accept path (vsock-transport.ts), over a unix socket. */
function connectedPair(sock: string): Promise<Pair> {
  const n = native();
  const listenFd = n.unixListenNb(sock, 1);
  return new Promise((resolve, reject) => {
    let hostEnd: FdStream | undefined;
    const stop = acceptLoop(listenFd, (agentEnd) => resolve({ agentEnd, hostEnd: hostEnd!, stop }), reject);
    try {
      hostEnd = new FdStream(n.unixConnect(sock));
    } catch (err) {
      stop();
      reject(err);
    }
  });
}

/**
 * Two in-memory streams connected to each other: what one end writes, the
 * other reads. For the snapshot's warm-up, where neither the addon (no
 * sockets) nor any handle may outlive the run.
 */
export function memoryPair(): Promise<Pair> {
  const ends: Duplex[] = [];
  const end = (peer: () => Duplex) => new Duplex({
    read() { /* pushed by the peer's writes */ },
    write(chunk: Buffer, _enc, cb) { peer().push(chunk); cb(); },
    final(cb) { peer().push(null); cb(); },
  });
  ends.push(end(() => ends[1]!), end(() => ends[0]!));
  return Promise.resolve({ agentEnd: ends[0]!, hostEnd: ends[1]!, stop: () => ends.forEach((e) => e.destroy()) });
}

/**
 * The network of the snapshot's warm-up: the real CreateSandbox path up to
 * the links, which it leaves alone (no netlink without the addon, and the
 * snapshot-building guest's links are nobody's); resolv.conf in the scratch
 * directory.
 */
export class SnapshotNetwork extends WarmNetwork {
  override loopbackUp(): void { /* no links touched at image build time */ }
  override listInterfaces(): ReturnType<GuestNetwork['listInterfaces']> { return { interfaces: [] }; }
  override listRoutes(): ReturnType<GuestNetwork['listRoutes']> { return { routes: [] }; }
}

/**
 * The same warm-up at image build time, inside the V8 startup snapshot's
 * build (src/agent/boot.ts): Node keeps compiled functions in a snapshot
 * (bytecode; measured on the host: a 20000-line function's first call took
 * 33 ms from a snapshot built without calling it, 0.13-0.27 ms with), so
 * a cold agent's first Check, CreateSandbox and container RPCs do not parse
 * and compile the ttrpc server, codecs and handlers under TCG. Over
 * in-memory streams (a snapshot holds no socket and cannot load the addon);
 * its sandbox, policy gate and scratch directory are its own and gone
 * before the snapshot is taken, as with a template's warm-up.
 */
export function warmUpForSnapshot(scratch = path.join(os.tmpdir(), 'kata-ts-snapshot-warm-up')): Promise<string> {
  return warmUp(scratch, new SnapshotNetwork(path.join(scratch, 'resolv.conf')), memoryPair, 'snapshot warm-up');
}

/**
 * Runs the warm-up; resolves with one line for the console. Never throws:
 * a warm-up that fails costs the clones time, not the template.
 */
export async function warmUp(scratch = '/run/kata-ts/warm-up', network: GuestNetwork = new WarmNetwork(path.join(scratch, 'resolv.conf')),
  pairOf: (sock: string) => Promise<Pair> = connectedPair, label = 'template warm-up'): Promise<string> {
  const t0 = process.hrtime.bigint();
  let served = 0;
  let coded = 0;
  const errors: string[] = [];
  let client: RpcClient | undefined;
  let pair: Pair | undefined;
  try {
    fs.rmSync(scratch, { recursive: true, force: true });
    fs.mkdirSync(scratch, { recursive: true });
    pair = await pairOf(path.join(scratch, 'agent.sock'));
    const { agentEnd, hostEnd } = pair;
    const sandbox = new AgentSandbox({ runtime: NO_RUNTIME, stateDir: path.join(scratch, 'containers'), manageHost: false,
      network, cgroupRoot: path.join(scratch, 'cgroup') });
    const server = agentRpcServer(agentHandlers(sandbox, new PolicyGate({ log: () => undefined })), (why) => errors.push(why));
    server.serve(agentEnd);
    client = new RpcClient(hostEnd, AGENT_SERVICE, AGENT_MAX_MESSAGE);
    const methods = agentMethods();
    for (const s of samples(scratch)) {
      const m = methods.get(s.rpc);
      if (!m) continue;
      const payload = m.encodeRequest(s.req);
      if (s.expect === 'codec') {
        m.decodeRequest(payload);
        coded++;
        continue;
      }
      const err = await (m.responseStream
        ? new Promise<Error | null>((resolve) => client!.stream(s.rpc, payload, (msg) => m.decodeResponse(msg), resolve))
        : client.call(s.rpc, payload, 10_000).then((b) => (m.decodeResponse(b), null), (e: Error) => e));
      // An outcome other than the expected one means this path was not the one a clone takes.
      if ((err === null) !== (s.expect === 'ok')) errors.push(`${s.rpc}: ${err ? err.message : 'succeeded, expected an error'}`);
      served++;
    }
    // The real server's encoders of the responses no sample produced.
    for (const m of methods.values()) m.encodeResponse({});
    await sandbox.destroySandbox();
  } catch (err) {
    errors.push((err as Error).message);
  } finally {
    client?.close();
    pair?.agentEnd.destroy();
    pair?.stop();
    try { fs.rmSync(scratch, { recursive: true, force: true }); } catch (err) { errors.push((err as Error).message); }
  }
  const ms = Math.round(Number(process.hrtime.bigint() - t0) / 1e6);
  return `kata-agent: ${label}: ${served} RPCs served, ${coded} through the codec only, ${ms} ms` +
    (errors.length ? `; ${errors.join('; ')}` : '');
}
