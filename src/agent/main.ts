/**
 * kata-ts agent entry point: started by kata-init (PID 1) in the guest.
 * Serves the AgentService (proto/agent.proto) on the agent transport and runs
 * containers with crun. Logs JSON lines to the console (the host keeps them
 * in the sandbox's console log).
 *
 * winston is loaded only when something is logged (or with agent.log=debug):
 * under TCG requiring it costs ~0.8 s of boot, and a healthy agent logs
 * nothing on the way to ready — the ready line below carries its timings.
 */
import * as grpc from '@grpc/grpc-js';
import { agentServiceDefinition } from '../protocols/agent-api';
import { AgentSandbox } from './sandbox';
import { agentHandlers } from './service';
import { PolicyGate } from './policy';
import { CrunRuntime } from './oci-runtime';
import { serveOnVsock } from './vsock-transport';
import { AGENT_READY_MARKER } from '../protocols/agent-dialer';
import { debugConsoleAllowed, DEFAULT_DEBUG_CONSOLE_DIR } from './debug-console';

async function run(): Promise<void> {
  const cmdline = await import('node:fs').then((fs) => fs.readFileSync('/proc/cmdline', 'utf8')).catch(() => '');
  const debug = /(^|\s)agent\.log=debug(\s|$)/.test(cmdline);
  if (debug) (await import('../common/log')).configureLogging({ source: 'agent', level: 'debug' });
  const sandbox = new AgentSandbox({ runtime: new CrunRuntime(), stateDir: '/run/kata-ts/containers', manageHost: true,
    debugConsole: { enabled: debugConsoleAllowed(cmdline), ptyHelper: '/sbin/kata-pty', dir: DEFAULT_DEBUG_CONSOLE_DIR } });
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
  // The policy's hash may be pinned on the command line (policy.ts): fixed for this VM's life.
  server.addService(agentServiceDefinition(), agentHandlers(sandbox, PolicyGate.fromCmdline(cmdline)));
  process.on('SIGTERM', () => undefined); // PID-1's child: only the host decides when we stop
  serveOnVsock(server, grpc.ServerCredentials.createInsecure(), () => {
    // The host waits for this marker on the console before it dials; the
    // JSON after it (start-up timings) is logged by the host.
    const guestUptimeS = Number(require('node:fs').readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
    process.stderr.write(`${AGENT_READY_MARKER} ${JSON.stringify({ transport: 'vsock', nodeUptimeMs: Math.round(process.uptime() * 1000), guestUptimeMs: Math.round(guestUptimeS * 1000) })}\n`);
  });
}

export function main(): void {
  run().catch((err: Error) => {
    process.stderr.write(`kata-agent: fatal: ${err.stack ?? err.message}\n`);
    process.exit(1);
  });
}

if (require.main === module) main();
