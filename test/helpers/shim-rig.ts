/**
 * The shim's task service without containerd or a VM, for unit tests: the
 * service served over real ttrpc on a unix socket with a client connected,
 * and a stand-in hypervisor that records each boot request and refuses it.
 */
import * as path from 'node:path';
import { TtrpcServer } from '../../src/protocols/ttrpc/server';
import { TtrpcClient } from '../../src/protocols/ttrpc/client';
import type { TaskService } from '../../src/shim/service';
import { registerTaskService } from '../../src/shim/registration';
import type { Hypervisor, VmConfig } from '../../src/hypervisor/hypervisor';

export interface ServedTaskService {
  client: TtrpcClient;
  /** Closes the client, then the server. */
  close(): Promise<void>;
}

export async function serveTaskService(svc: TaskService, dir: string): Promise<ServedTaskService> {
  const server = new TtrpcServer();
  registerTaskService(server, svc);
  await server.listen(path.join(dir, 'shim.sock'));
  const client = await TtrpcClient.connect(path.join(dir, 'shim.sock'));
  return {
    client,
    close: async () => {
      client.close();
      await server.close();
    },
  };
}

/** Pushes every VmConfig it is asked to boot into `boots`, then fails the boot. */
export function recordingHypervisor(boots: VmConfig[]): Hypervisor {
  return {
    name: 'qemu',
    start: async (c: VmConfig) => {
      boots.push(c);
      throw new Error('no VM in unit tests');
    },
    stop: async () => undefined,
    exited: () => new Promise<string>(() => undefined),
    consoleTail: () => '',
  } as unknown as Hypervisor;
}
