/**
 * A NETLINK_ROUTE socket in a given network namespace: the addon creates it
 * inside the namespace (native/src/netns.cc), after which plain blocking
 * write(2)/read(2) talk to the kernel. Requests are synchronous on purpose:
 * the kernel answers rtnetlink requests at once (no I/O waits), a pod has a
 * handful of interfaces, and ordering stays obvious. Each request waits for
 * its ack (or the end of its dump) and turns NLMSG_ERROR into a
 * NetlinkError carrying the errno and the kernel's extended-ack text.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { native } from '../../common/native';
import {
  NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkError, decodeError, decodeMessages, encodeMessage,
  type NetlinkMessage,
} from './message';

export const NETLINK_ROUTE = 0;
const RECV_BUF = 1 << 16;

const ERRNO_NAMES = new Map<number, string>(Object.entries(os.constants.errno).map(([k, v]) => [v as number, k]));

export function errnoName(e: number): string {
  return ERRNO_NAMES.get(e) ?? `errno ${e}`;
}

/** The minimum a transport must do; tests substitute a scripted one. */
export interface NetlinkTransport {
  send(b: Buffer): void;
  receive(): Buffer;
  close(): void;
}

class FdTransport implements NetlinkTransport {
  private readonly buf = Buffer.alloc(RECV_BUF);
  constructor(private fd: number) {}
  send(b: Buffer): void {
    const n = fs.writeSync(this.fd, b);
    if (n !== b.length) throw new NetlinkError('io', `netlink send: ${n} of ${b.length} bytes`);
  }
  receive(): Buffer {
    const n = fs.readSync(this.fd, this.buf, 0, this.buf.length, null);
    return Buffer.from(this.buf.subarray(0, n));
  }
  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

export class NetlinkSocket {
  private seq = Math.floor(Date.now() / 1000) & 0xffff;

  constructor(private readonly transport: NetlinkTransport, readonly netns: string | null = null) {}

  /** A rtnetlink socket in the namespace at `netns` (a /var/run/netns or /proc/PID/ns/net path), or ours. */
  static open(netns: string | null = null): NetlinkSocket {
    let fd: number;
    try {
      fd = native().netlinkOpen(NETLINK_ROUTE, netns);
    } catch (err) {
      throw new NetlinkError('io', `cannot open a netlink socket${netns ? ` in network namespace ${netns}` : ''}: ${(err as Error).message}`, { cause: err });
    }
    return new NetlinkSocket(new FdTransport(fd), netns);
  }

  close(): void {
    this.transport.close();
  }

  /** A change request (RTM_NEW…, RTM_DEL…, RTM_SET…): resolves on the kernel's ack. `what` names it in errors. */
  request(what: string, type: number, flags: number, header: Buffer, attrs: Buffer[] = []): void {
    this.exchange(what, type, flags | NLM_F_REQUEST | NLM_F_ACK, header, attrs, false);
  }

  /** A dump (GET* with NLM_F_DUMP): every answer message, in order. */
  dump(what: string, type: number, header: Buffer, attrs: Buffer[] = []): NetlinkMessage[] {
    return this.exchange(what, type, NLM_F_REQUEST | NLM_F_DUMP, header, attrs, true);
  }

  private exchange(what: string, type: number, flags: number, header: Buffer, attrs: Buffer[], dump: boolean): NetlinkMessage[] {
    const seq = (this.seq = (this.seq + 1) >>> 0);
    this.transport.send(encodeMessage(type, flags, seq, header, attrs));
    const out: NetlinkMessage[] = [];
    for (let rounds = 0; rounds < 100000; rounds++) {
      const datagram = this.transport.receive();
      if (datagram.length === 0) throw new NetlinkError('io', `${what}: the netlink socket closed`);
      for (const m of decodeMessages(datagram)) {
        if (m.seq !== seq) continue; // a late answer to an earlier request
        if (m.type === NLMSG_ERROR) {
          const e = decodeError(m);
          if (e.errno === 0) return out;
          const err = new NetlinkError('kernel', `${what}: ${errnoName(e.errno)}${e.message ? ` (${e.message})` : ''}${this.netns ? ` in ${this.netns}` : ''}`);
          err.errno = e.errno;
          throw err;
        }
        if (m.type === NLMSG_DONE) return out;
        out.push(m);
        if (!dump) return out;
      }
    }
    throw new NetlinkError('malformed', `${what}: no end to the kernel's answer`);
  }
}
