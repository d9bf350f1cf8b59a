/**
 * CRI port-forward, agent side: a vsock listener on PORT_FORWARD_VSOCK_PORT
 * (src/protocols/port-forward.ts has the wire). Each stream the host opens
 * names a TCP port; the agent connects to 127.0.0.1:PORT in the guest's
 * network namespace — the pod's, where every container lives (network.ts:
 * the agent drops the spec's netns, the VM is the pod's netns) — answers
 * one status byte and then copies both ways: pipe() gives backpressure
 * (a slow reader stops the other side's reads), and each direction ends on
 * its own (half-close: the host's end is a FIN to the server, the server's
 * FIN a vsock SHUTDOWN to the host). Either side failing closes both.
 *
 * A bad header (wrong magic, port 0 or > 65535, short, or none within
 * HEADER_WAIT_MS) closes the stream with one log line; nothing else is
 * affected.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { acceptLoop } from '../common/fd-stream';
import { listenVsockSized } from './vsock-transport';
import {
  decodePortForwardHeader, PF_HEADER_BYTES, PF_STATUS_FAILED, PF_STATUS_OK, PF_STATUS_REFUSED, PORT_FORWARD_VSOCK_PORT,
} from '../protocols/port-forward';

export const HEADER_WAIT_MS = 10_000;

export interface PortForwardOptions {
  log?: (msg: string) => void;
  headerWaitMs?: number;
  /** Where "127.0.0.1:port" goes (tests point it elsewhere). */
  connect?: (port: number) => net.Socket;
}

const defaultLog = (m: string) => process.stderr.write(`kata-agent: port-forward: ${m}\n`);

/** Counters (tests, debugging). */
export const portForwardStats = { served: 0, rejected: 0, refused: 0 };

/**
 * Serves one host stream: header, connect, status, copy. Resolves when both
 * the stream and the TCP connection are closed.
 */
export function servePortForward(stream: Duplex, opts: PortForwardOptions = {}): Promise<void> {
  const log = opts.log ?? defaultLog;
  return new Promise<void>((resolve) => {
    let done = false;
    const reject = (why: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      stream.removeListener('readable', onReadable);
      portForwardStats.rejected++;
      log(`closed a connection: ${why}`);
      stream.destroy();
      resolve();
    };
    const timer = setTimeout(() => reject(`no ${PF_HEADER_BYTES}-byte header within ${opts.headerWaitMs ?? HEADER_WAIT_MS} ms`), opts.headerWaitMs ?? HEADER_WAIT_MS);
    timer.unref();
    const onEnd = () => reject('the host closed it before a whole header');
    const onError = (e: Error) => reject(`reading the header: ${e.message}`);
    const onReadable = () => {
      if (done) return;
      const h = stream.read(PF_HEADER_BYTES) as Buffer | null;
      if (!h) return;
      // At the end a stream hands out what is left, however short.
      if (h.length < PF_HEADER_BYTES) return reject('the host closed it before a whole header');
      done = true;
      clearTimeout(timer);
      stream.removeListener('readable', onReadable);
      stream.removeListener('end', onEnd);
      stream.removeListener('error', onError);
      const d = decodePortForwardHeader(h);
      if ('error' in d) {
        portForwardStats.rejected++;
        log(`closed a connection: ${d.error}`);
        stream.destroy();
        resolve();
        return;
      }
      stream.pause();
      connectAndCopy(stream, d.port, opts, log).then(resolve);
    };
    stream.on('readable', onReadable);
    stream.once('end', onEnd);
    stream.once('error', onError);
  });
}

function connectAndCopy(stream: Duplex, port: number, opts: PortForwardOptions, log: (m: string) => void): Promise<void> {
  return new Promise<void>((resolve) => {
    const tcp = opts.connect ? opts.connect(port) : net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    let closed = 0;
    const closedOne = () => { if (++closed === 2) resolve(); };
    stream.once('close', closedOne);
    tcp.once('close', closedOne);
    // Before the connect: the host may already be gone; then so is the attempt.
    const early = () => tcp.destroy();
    stream.once('error', early);
    stream.once('close', early);
    tcp.once('error', (e: NodeJS.ErrnoException) => {
      const refused = e.code === 'ECONNREFUSED';
      if (refused) portForwardStats.refused++;
      else log(`connect to 127.0.0.1:${port}: ${e.message}`);
      stream.removeListener('close', early);
      // The status tells the host why; then this side is done.
      stream.end(Buffer.from([refused ? PF_STATUS_REFUSED : PF_STATUS_FAILED]));
      stream.once('finish', () => stream.destroy());
      stream.once('error', () => stream.destroy());
      stream.resume(); // drain whatever the client sent meanwhile
    });
    tcp.once('connect', () => {
      stream.removeListener('error', early);
      stream.removeListener('close', early);
      tcp.removeAllListeners('error');
      portForwardStats.served++;
      stream.write(Buffer.from([PF_STATUS_OK]));
      // A failing side ends the other: no half-dead copy left behind. A
      // clean end is a half-close passed on by pipe(); each side then
      // closes itself once both of its directions are done (autoDestroy),
      // after its last bytes went out.
      tcp.on('error', () => stream.destroy());
      stream.on('error', () => tcp.destroy());
      tcp.pipe(stream);
      stream.pipe(tcp);
      stream.resume();
    });
  });
}

/** Listens on vsock `port` until the agent ends; every stream is served on its own. */
export function listenPortForward(bufferBytes: number, port = PORT_FORWARD_VSOCK_PORT, log: (m: string) => void = defaultLog): () => void {
  const fd = listenVsockSized(port, bufferBytes, log);
  return acceptLoop(fd, (s) => void servePortForward(s, { log }), (err) => log(`accept: ${err.message}`));
}
