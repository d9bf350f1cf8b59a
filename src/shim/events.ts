/**
 * Task events to containerd (topics /tasks/create, /tasks/exit, ...), in the
 * order they happened. Like containerd 1.6's own shims, events go over ttrpc
 * to containerd's events service (Events.Forward at $TTRPC_ADDRESS, one
 * connection kept open); where that address is not given or the call
 * fails, the publish binary containerd passed (-publish-binary) is run as
 * `<bin> --address A publish --topic T --namespace N` with the event as a
 * protobuf Any on stdin.
 */
import { spawn } from 'node:child_process';
import { errorMessage } from '../common/errors';
import { logger } from '../common/log';
import { TtrpcClient } from '../protocols/ttrpc/client';
import { encode, timestamp } from '../protocols/ttrpc/messages';

export const TOPICS = {
  TaskCreate: '/tasks/create', TaskStart: '/tasks/start', TaskExit: '/tasks/exit', TaskDelete: '/tasks/delete',
  TaskExecAdded: '/tasks/exec-added', TaskExecStarted: '/tasks/exec-started', TaskPaused: '/tasks/paused',
  TaskResumed: '/tasks/resumed', TaskOOM: '/tasks/oom',
} as const;
export type EventName = keyof typeof TOPICS;

export interface PublishTarget {
  namespace: string;
  /** containerd's gRPC address (for the publish binary). */
  address: string;
  publishBinary: string;
  /** containerd's ttrpc address ($TTRPC_ADDRESS). */
  ttrpcAddress?: string;
}

export interface Publisher {
  publish(name: EventName, event: Record<string, unknown>): void;
  /** Resolves when everything queued so far was delivered (or failed). */
  flush(): Promise<void>;
  close(): void;
}

export class ContainerdPublisher implements Publisher {
  private chain: Promise<void> = Promise.resolve();
  private client: Promise<TtrpcClient> | undefined;
  private readonly log = logger('events');

  constructor(private readonly target: PublishTarget) {}

  publish(name: EventName, event: Record<string, unknown>): void {
    const any = { type_url: `containerd.events.${name}`, value: encode(`containerd.events.${name}`, event) };
    this.chain = this.chain.then(() => this.deliver(TOPICS[name], any)).catch((err) => {
      this.log.warn('event not delivered', { topic: TOPICS[name], err: errorMessage(err) });
    });
  }

  private async deliver(topic: string, any: { type_url: string; value: Buffer }): Promise<void> {
    if (this.target.ttrpcAddress) {
      try {
        this.client ??= TtrpcClient.connect(this.target.ttrpcAddress);
        const c = await this.client;
        await c.call('containerd.services.events.ttrpc.v1.Events', 'Forward', encode('containerd.events.ForwardRequest', {
          envelope: { timestamp: timestamp(new Date()), namespace: this.target.namespace, topic, event: any },
        }));
        return;
      } catch (err) {
        this.client = undefined;
        this.log.debug('ttrpc forward failed, using the publish binary', { err: errorMessage(err) });
      }
    }
    if (!this.target.publishBinary) return;
    await new Promise<void>((resolve, reject) => {
      const p = spawn(this.target.publishBinary, ['--address', this.target.address, 'publish', '--topic', topic, '--namespace', this.target.namespace], { stdio: ['pipe', 'ignore', 'pipe'] });
      let err = '';
      p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      p.on('error', reject);
      p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`publish ${topic}: status ${code}: ${err.trim()}`))));
      p.stdin!.end(encode('google.protobuf.Any', any));
    });
  }

  flush(): Promise<void> {
    return this.chain;
  }

  close(): void {
    void this.client?.then((c) => c.close(), () => undefined);
  }
}

/** Collects events in memory (unit tests, and runs without containerd). */
export class MemoryPublisher implements Publisher {
  readonly events: { name: EventName; event: Record<string, unknown> }[] = [];
  publish(name: EventName, event: Record<string, unknown>): void {
    this.events.push({ name, event });
  }
  async flush(): Promise<void> {}
  close(): void {}
}
