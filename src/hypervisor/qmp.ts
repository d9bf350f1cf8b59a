/**
 * QMP client (QEMU Machine Protocol, docs/interop/qmp-spec): JSON objects
 * over a unix socket. On connect the server greets; `qmp_capabilities` leaves
 * negotiation mode; then each {"execute", "arguments", "id"} gets one
 * {"return"} or {"error"} with the same id, and {"event"} objects arrive at any
 * time. Responses are matched by id so calls may overlap.
 */
import * as net from 'node:net';
import { EventEmitter } from 'node:events';
import { KataError } from '../common/errors';
import { native } from '../common/native';

export class QmpError extends KataError<'connect' | 'command' | 'closed' | 'protocol'> {}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  cmd: string;
}

export class QmpClient extends EventEmitter {
  private sock: net.Socket | undefined;
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private greeted: (() => void) | undefined;

  /** Connect, retrying while QEMU creates the socket. */
  async connect(path: string, timeoutMs = 10000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.tryConnect(path);
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new QmpError('connect', `QMP connect ${path}: ${(err as Error).message}`, { cause: err });
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    await this.execute('qmp_capabilities');
  }

  private tryConnect(path: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(path);
      const onErr = (e: Error) => reject(e);
      s.once('error', onErr);
      s.once('connect', () => {
        s.off('error', onErr);
        this.sock = s;
        this.greeted = resolve;
        s.setEncoding('utf8');
        s.on('data', (d: string) => this.onData(d));
        s.on('close', () => this.onClose());
        s.on('error', () => undefined);
      });
    });
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line);
      } catch {
        this.emit('protocol-error', line);
        continue;
      }
      if ('QMP' in msg) {
        this.greeted?.();
        this.greeted = undefined;
      } else if ('event' in msg) {
        this.emit('event', msg.event, msg.data ?? {});
      } else if ('id' in msg) {
        const p = this.pending.get(String(msg.id));
        if (!p) continue;
        this.pending.delete(String(msg.id));
        if ('error' in msg) {
          const e = msg.error as { class?: string; desc?: string };
          p.reject(new QmpError('command', `QMP ${p.cmd}: ${e.desc ?? 'error'} (${e.class ?? '?'})`));
        } else p.resolve(msg.return);
      }
    }
  }

  private onClose(): void {
    for (const p of this.pending.values()) p.reject(new QmpError('closed', `QMP ${p.cmd}: connection closed`));
    this.pending.clear();
    this.sock = undefined;
    this.emit('close');
  }

  execute<T = unknown>(cmd: string, args?: Record<string, unknown>): Promise<T> {
    const s = this.sock;
    if (!s) return Promise.reject(new QmpError('closed', `QMP ${cmd}: not connected`));
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, cmd });
      s.write(JSON.stringify(args ? { execute: cmd, arguments: args, id } : { execute: cmd, id }) + '\n');
    });
  }

  /**
   * A command that carries an fd (SCM_RIGHTS), as `getfd` and `add-fd`
   * expect: the JSON goes out in the same sendmsg as the fd, through the
   * addon, on the socket's own descriptor. Only when nothing is queued in
   * the stream (commands must not overtake one another).
   */
  executeWithFd<T = unknown>(cmd: string, args: Record<string, unknown>, fd: number): Promise<T> {
    const s = this.sock;
    if (!s) return Promise.reject(new QmpError('closed', `QMP ${cmd}: not connected`));
    const sockFd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (sockFd === undefined || sockFd < 0) return Promise.reject(new QmpError('protocol', `QMP ${cmd}: no descriptor to pass an fd on`));
    if (s.writableLength > 0) return Promise.reject(new QmpError('protocol', `QMP ${cmd}: other commands are still being written`));
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, cmd });
      const sent = native().sendMsg(sockFd, Buffer.from(JSON.stringify({ execute: cmd, arguments: args, id }) + '\n'), [fd]);
      if (sent < 0) {
        this.pending.delete(id);
        reject(new QmpError('protocol', `QMP ${cmd}: the socket would block`));
      }
    });
  }

  close(): void {
    this.sock?.destroy();
  }
}
