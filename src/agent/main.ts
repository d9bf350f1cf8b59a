/**
 * kata-ts agent entry point: started by kata-init (PID 1) in the guest.
 * Serves the AgentService (proto/agent.proto) over ttrpc on vsock and runs
 * containers with crun. Logs JSON lines to the console (the host keeps them
 * in the sandbox's console log).
 *
 * Nothing heavy is loaded on the way to ready: no grpc-js, no protobufjs
 * (ttrpc with our own codec, README architecture), and winston only when
 * something is logged (or with agent.log=debug) — under TCG requiring it
 * costs ~0.8 s. The ready line carries the guest's start-up phases instead.
 */
import * as fs from 'node:fs';
import { AgentSandbox } from './sandbox';
import { agentHandlers, agentRpcServer } from './service';
import { PolicyGate } from './policy';
import { CrunRuntime } from './oci-runtime';
import { AGENT_VSOCK_BUFFER, serveOnVsock } from './vsock-transport';
import { PassfdStreams, passfdPortFromCmdline } from './passfd';
import { listenPortForward } from './port-forward';
import { AGENT_READY_MARKER } from '../protocols/agent-dialer';
import { debugConsoleAllowed, DEFAULT_DEBUG_CONSOLE_DIR } from './debug-console';
import { setContainerPhaseLog } from './container';
import { agentMethods } from '../protocols/agent-api';
import { warmUp, warmUpForSnapshot, warmUpWanted } from './warmup';
import { IdleTrimmer, withIdleTrim } from './idle-trim';

/** Start-up phases measured before main() runs (boot.ts). */
export interface BootPhases {
  /** Node's own start, to the first line of boot.js. */
  nodeStartMs: number;
  /** Loading (evaluating) the agent's modules (0 from a snapshot: done at image build). */
  modulesMs: number;
  /** Started from the V8 startup snapshot (boot.ts). */
  snapshot?: boolean;
}

/**
 * Work done at image build time when the agent is snapshotted (boot.ts):
 * parse proto/agent.proto into the service's codecs, so the guest does not,
 * and run the RPC paths once (warmup.ts warmUpForSnapshot), so the snapshot
 * holds them compiled. Resolves with the warm-up's line; Node takes the
 * snapshot once the event loop has drained, after it.
 */
export function prepare(): Promise<string> {
  agentMethods();
  return warmUpForSnapshot();
}

const msSince = (t: bigint) => Math.round(Number(process.hrtime.bigint() - t) / 1e6);

async function run(phases: BootPhases): Promise<void> {
  const t0 = process.hrtime.bigint();
  // The image build's check of a fresh snapshot (guest/image/agent-snapshot.sh): it deserialized and got here.
  if (process.env.KATA_TS_AGENT_SNAPSHOT_CHECK === '1') {
    process.stdout.write(`agent snapshot ok: ${agentMethods().size} RPCs, snapshot=${phases.snapshot === true} ` +
      `nodeStartMs=${phases.nodeStartMs} modulesMs=${phases.modulesMs} nodeUptimeMs=${Math.round(process.uptime() * 1000)} ` +
      `guestUptimeMs=${Math.round(Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 1000)}\n`);
    return;
  }
  let cmdline = '';
  try { cmdline = fs.readFileSync('/proc/cmdline', 'utf8'); } catch { /* not Linux: tests */ }
  const debug = /(^|\s)agent\.log=debug(\s|$)/.test(cmdline);
  if (debug) {
    const log = await import('../common/log');
    log.configureLogging({ source: 'agent', level: 'debug' });
    setContainerPhaseLog((msg, fields) => log.logger('container').debug(msg, fields));
  }
  const logSetupMs = msSince(t0);
  const t1 = process.hrtime.bigint();
  // Passfd IO (passfd.ts): listening before the ready marker, so a VM template's clones have it too.
  const passfdPort = passfdPortFromCmdline(cmdline);
  let passfd: PassfdStreams | undefined;
  if (passfdPort) {
    passfd = new PassfdStreams();
    try {
      passfd.listenVsock(passfdPort, AGENT_VSOCK_BUFFER);
    } catch (err) {
      process.stderr.write(`kata-agent: passfd: cannot listen on vsock port ${passfdPort}: ${(err as Error).message}; stdio ports will be refused\n`);
      passfd = undefined;
    }
  }
  // CRI port-forward (port-forward.ts): the host's streams into 127.0.0.1:PORT of the pod; before the marker too.
  try {
    listenPortForward(AGENT_VSOCK_BUFFER);
  } catch (err) {
    process.stderr.write(`kata-agent: port-forward: cannot listen: ${(err as Error).message}\n`);
  }
  const sandbox = new AgentSandbox({ passfd, runtime: new CrunRuntime(), stateDir: '/run/kata-ts/containers', manageHost: true,
    debugConsole: { enabled: debugConsoleAllowed(cmdline), ptyHelper: '/sbin/kata-pty', dir: DEFAULT_DEBUG_CONSOLE_DIR } });
  // The policy's hash may be pinned on the command line (policy.ts): fixed for this VM's life.
  // Freed memory back to the guest kernel (and by free page reporting to the host) once the calls stop (idle-trim.ts).
  // agent.idle_trim=0 on the kernel command line turns it off (to compare).
  const trimmer = new IdleTrimmer({ enabled: !/(^|\s)agent\.idle_trim=0(\s|$)/.test(cmdline) });
  const server = agentRpcServer(withIdleTrim(agentHandlers(sandbox, PolicyGate.fromCmdline(cmdline)), trimmer),
    (why) => process.stderr.write(`kata-agent: closed a connection: ${why}\n`));
  const serviceMs = msSince(t1);
  process.on('SIGTERM', () => undefined); // PID-1's child: only the host decides when we stop
  // A VM template's agent runs its RPC paths once, so every clone inherits them compiled (warmup.ts).
  if (warmUpWanted(cmdline)) process.stderr.write(`${await warmUp()}\n`);
  serveOnVsock(server, () => {
    // The host waits for this marker on the console before it dials; the
    // JSON after it (start-up phases) is logged by the host.
    const nodeUptimeMs = Math.round(process.uptime() * 1000);
    const guestUptimeMs = Math.round(Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 1000);
    process.stderr.write(`${AGENT_READY_MARKER} ${JSON.stringify({
      transport: 'ttrpc+vsock', snapshot: phases.snapshot === true, nodeUptimeMs, guestUptimeMs,
      // kernel boot + kata-init, until the node binary started
      kernelInitMs: guestUptimeMs - nodeUptimeMs,
      nodeStartMs: phases.nodeStartMs, modulesMs: phases.modulesMs,
      // main() to listening: winston (agent.log=debug only), sandbox + service table (reads the proto), vsock listen
      apiReadyMs: msSince(t0), logSetupMs, serviceMs,
    })}\n`);
  });
}

export function main(phases: BootPhases = { nodeStartMs: Math.round(process.uptime() * 1000), modulesMs: 0 }): void {
  run(phases).catch((err: Error) => {
    process.stderr.write(`kata-agent: fatal: ${err.stack ?? err.message}\n`);
    process.exit(1);
  });
}

if (require.main === module) main();
