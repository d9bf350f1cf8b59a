/**
 * CRI port-forward, host side: makes `localhost:PORT` inside the pod's
 * network namespace reach PORT in the VM, for any port.
 *
 * containerd 1.6 (pkg/cri/server/sandbox_portforward_linux.go) serves
 * PortForward by entering the sandbox's netns on the host and dialling
 * "tcp4" `localhost:PORT` there (then "tcp6"); kubectl port-forward and
 * critest's portforward spec go that way. In a kata-ts pod the server runs
 * in the VM and loopback traffic never reaches the tc mirror, so:
 *
 * - a listening socket on 127.0.0.1:P (P picked by the kernel) is made
 *   inside the pod netns (native tcpListenInNetns) and served by this
 *   process's event loop;
 * - one nat rule in that netns, `OUTPUT -o lo -p tcp -d 127.0.0.1 ! --dport
 *   P -j REDIRECT --to-ports P`, sends every locally made connection to
 *   127.0.0.1 to it (nothing else of the pod runs in the host netns: its
 *   processes are in the VM);
 * - each accepted connection learns the port it was dialled on from
 *   conntrack (SO_ORIGINAL_DST; none: it dialled P itself), opens a vsock
 *   stream to the agent (src/protocols/port-forward.ts has the wire) and
 *   copies both ways with backpressure and half-close.
 *
 * A guest port nobody listens on: the client's connection is reset (as
 * close to "connection refused" as an accepted connection gets). A VM that
 * is gone: the same. The rule is removed at close(); the netns usually goes
 * right after, with it.
 */
import { execFile } from 'node:child_process';
import * as net from 'node:net';
import { errorMessage } from '../common/errors';
import { native, type NativeAddon } from '../common/native';
import { connectVsock } from '../protocols/agent-dialer';
import { encodePortForwardHeader, PF_STATUS_OK, PORT_FORWARD_VSOCK_PORT, portForwardStatusText } from '../protocols/port-forward';

/** Tags our rule in `iptables -t nat -S` (and lets a leak check find it). */
export const RULE_COMMENT = 'kata-ts-port-forward';
const VSOCK_CONNECT_MS = 5000;
const STATUS_WAIT_MS = 30_000;
/** bind(127.0.0.1) where lo is down. */
const EADDRNOTAVAIL = 99;

interface Log {
  debug(msg: string, meta?: object): void;
  warn(msg: string, meta?: object): void;
}

export interface PortForwarderOptions {
  /** The pod's network namespace (a path nsenter and setns take). */
  netns: string;
  /** The VM's hybrid vsock socket; asked per connection (throws: the VM is gone). */
  vsockSocket: () => string;
  log: Log;
  /** The iptables binary (default: iptables from PATH, /usr/sbin, /sbin). */
  iptables?: string;
  n?: NativeAddon;
}

/** The nat rule's arguments after `-A`/`-D`/`-C`. */
export function redirectRuleArgs(listenPort: number): string[] {
  return ['OUTPUT', '-o', 'lo', '-p', 'tcp', '-d', '127.0.0.1', '!', '--dport', String(listenPort),
    '-m', 'comment', '--comment', RULE_COMMENT, '-j', 'REDIRECT', '--to-ports', String(listenPort)];
}

/** Runs iptables in the netns; rejects with its stderr. */
export function iptablesInNetns(netns: string, args: string[], iptables = 'iptables'): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('nsenter', [`--net=${netns}`, '--', iptables, '-w', '5', ...args],
      { env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin:/usr/bin:/bin` }, timeout: 15_000 },
      (err, _out, stderr) => (err ? reject(new Error(`iptables ${args.slice(0, 4).join(' ')}: ${stderr.trim() || err.message}`)) : resolve()));
  });
}

/** Reads the agent's status byte; the rest stays in the stream. null: it ended first. */
function readStatus(s: net.Socket, timeoutMs: number): Promise<number | null> {
  return new Promise((resolve) => {
    const done = (v: number | null) => {
      clearTimeout(timer);
      s.removeListener('data', onData);
      s.removeListener('end', onEnd);
      s.removeListener('error', onEnd);
      s.removeListener('close', onEnd);
      resolve(v);
    };
    const onData = (d: Buffer) => {
      s.pause();
      if (d.length > 1) s.unshift(d.subarray(1));
      done(d[0]!);
    };
    const onEnd = () => done(null);
    const timer = setTimeout(onEnd, timeoutMs);
    s.on('data', onData);
    s.once('end', onEnd);
    s.once('error', onEnd);
    s.once('close', onEnd);
    s.resume();
  });
}

export class PortForwarder {
  private readonly conns = new Set<net.Socket>();
  private closed = false;
  /** Connections carried / reset (tests, debugging). */
  readonly stats = { forwarded: 0, reset: 0 };

  private constructor(
    private readonly opts: PortForwarderOptions,
    private readonly server: net.Server,
    /** P: where the rule sends connections, in the pod netns. */
    readonly listenPort: number,
  ) {}

  /**
   * Listens in the netns and adds the rule; on any failure nothing is left.
   * Undefined (one debug line) when the netns's loopback is down: 127.0.0.1
   * does not exist there, so nothing in it can dial localhost anyway (CNI's
   * loopback plugin brings it up for a real pod).
   */
  static async start(opts: PortForwarderOptions): Promise<PortForwarder | undefined> {
    const n = opts.n ?? native();
    if (!n.tcpListenInNetns || !n.tcpOriginalDst) throw new Error('port-forward: the native addon lacks tcpListenInNetns (rebuild native/)');
    let l: { fd: number; port: number };
    try {
      l = n.tcpListenInNetns(opts.netns, 0, 128);
    } catch (err) {
      if ((err as NodeJS.ErrnoException & { errno?: number }).errno !== EADDRNOTAVAIL) throw err;
      opts.log.debug('port-forward: the pod netns has no loopback up; nothing to forward', { netns: opts.netns });
      return undefined;
    }
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ fd: l.fd }, () => { server.removeListener('error', reject); resolve(); });
      });
    } catch (err) {
      try { n.closeFd(l.fd); } catch { /* listen took it */ }
      throw err;
    }
    const pf = new PortForwarder(opts, server, l.port);
    server.on('connection', (s) => pf.onConnection(s, n));
    server.on('error', (e) => opts.log.warn('port-forward listener failed', { err: e.message }));
    try {
      await iptablesInNetns(opts.netns, ['-t', 'nat', '-A', ...redirectRuleArgs(l.port)], opts.iptables);
    } catch (err) {
      server.close();
      throw err;
    }
    opts.log.debug('port-forward ready', { netns: opts.netns, listenPort: l.port });
    return pf;
  }

  private onConnection(client: net.Socket, n: NativeAddon): void {
    if (this.closed) { client.destroy(); return; }
    this.conns.add(client);
    client.once('close', () => this.conns.delete(client));
    client.on('error', () => undefined); // a reset client just ends its copy (close handles it)
    let port = this.listenPort;
    try {
      const fd = (client as unknown as { _handle?: { fd?: number } })._handle?.fd;
      const orig = fd !== undefined && fd >= 0 ? n.tcpOriginalDst!(fd) : null;
      if (orig) port = orig.port;
    } catch (err) {
      this.opts.log.warn('port-forward: cannot read the dialled port', { err: errorMessage(err) });
      this.reset(client);
      return;
    }
    void this.carry(client, port);
  }

  private reset(client: net.Socket): void {
    this.stats.reset++;
    if (!client.destroyed) client.resetAndDestroy();
  }

  private async carry(client: net.Socket, port: number): Promise<void> {
    let vs: net.Socket;
    try {
      vs = await connectVsock(this.opts.vsockSocket(), PORT_FORWARD_VSOCK_PORT, VSOCK_CONNECT_MS);
    } catch (err) {
      this.opts.log.warn('port-forward: cannot reach the guest', { port, err: errorMessage(err) });
      this.reset(client);
      return;
    }
    if (client.destroyed || this.closed) { vs.destroy(); client.destroy(); return; }
    // Each direction ends on its own: the guest's FIN must not end ours.
    vs.allowHalfOpen = true;
    this.conns.add(vs);
    vs.once('close', () => this.conns.delete(vs));
    vs.write(encodePortForwardHeader(port));
    const status = await readStatus(vs, STATUS_WAIT_MS);
    if (status !== PF_STATUS_OK) {
      this.opts.log.debug('port-forward refused', { port, why: status === null ? 'the guest closed the stream' : portForwardStatusText(status) });
      vs.destroy();
      this.reset(client);
      return;
    }
    this.stats.forwarded++;
    // A failing side ends the other; a clean end is a half-close that pipe()
    // passes on, and each socket closes itself once both its directions are done.
    vs.on('error', () => client.destroy());
    client.on('error', () => vs.destroy());
    vs.pipe(client);
    client.pipe(vs);
    client.resume();
    vs.resume();
  }

  /** Stops listening, drops every connection and removes the rule (when the netns is still there). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const c of this.conns) c.destroy();
    });
    try {
      await iptablesInNetns(this.opts.netns, ['-t', 'nat', '-D', ...redirectRuleArgs(this.listenPort)], this.opts.iptables);
    } catch (err) {
      // The netns is gone (CNI deleted it first): so is the rule.
      this.opts.log.debug('port-forward rule not removed', { err: errorMessage(err) });
    }
  }
}
