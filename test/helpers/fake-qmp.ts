/**
 * A stand-in QMP server for unit tests that drive QemuHypervisor against a
 * sleeping shell script instead of QEMU. It greets as QEMU does, answers
 * every command with {}, and keeps QEMU's bus rules that the hotplug code
 * depends on: a device_add onto an occupied bus/addr is refused with QEMU's
 * wording, a device_del frees the slot and is confirmed by DEVICE_DELETED
 * (unless the test withholds it, to exercise the timeout path).
 */
import * as net from 'node:net';

export type QmpCommand = { execute: string; arguments?: Record<string, unknown> };

export interface FakeQmp {
  server: net.Server;
  /** Every command received, in order. */
  commands: QmpCommand[];
  /** Arguments of every accepted device_add. */
  deviceAdds: Array<Record<string, unknown>>;
  /** Device ids whose DEVICE_DELETED is not sent (the test emits it later, or never). */
  withhold: Set<string>;
  /** Device ids whose device_del answers DeviceNotFound. */
  notFound: Set<string>;
  /** Device ids whose device_add is refused with a GenericError. */
  refuseAdd: Set<string>;
  /** Sends an event to the client, e.g. a late DEVICE_DELETED (which frees its slot). */
  emit(event: string, data: Record<string, unknown>): void;
}

/** Starts the server on `sock`; `onQuit` runs when the client sends quit. */
export function fakeQmp(sock: string, onQuit: () => void = () => undefined): FakeQmp {
  const commands: QmpCommand[] = [];
  const deviceAdds: Array<Record<string, unknown>> = [];
  const withhold = new Set<string>();
  const notFound = new Set<string>();
  const refuseAdd = new Set<string>();
  /** "bus:addr" → device id, as QEMU's buses see them. */
  const occupied = new Map<string, string>();
  const free = (id: unknown): void => {
    for (const [at, owner] of occupied) if (owner === id) occupied.delete(at);
  };
  let conn: net.Socket | undefined;
  const server = net.createServer((c) => {
    conn = c;
    c.on('error', () => undefined);
    c.write('{"QMP": {"version": {}, "capabilities": []}}\n');
    const reply = (body: object): void => { c.write(`${JSON.stringify(body)}\n`); };
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as QmpCommand & { id?: string };
        buf = buf.slice(nl + 1);
        const args = msg.arguments ?? {};
        commands.push({ execute: msg.execute, ...(msg.arguments ? { arguments: msg.arguments } : {}) });
        if (msg.execute === 'device_add') {
          if (refuseAdd.has(String(args.id))) {
            reply({ error: { class: 'GenericError', desc: `device_add ${String(args.id)} refused` }, id: msg.id });
            continue;
          }
          const at = `${String(args.bus ?? 'pci.0')}:${String(args.addr)}`;
          const owner = occupied.get(at);
          if (owner !== undefined) {
            reply({ error: { class: 'GenericError', desc: `PCI: slot ${at} function 0 not available for ${String(args.driver)}, in use by ${owner}` }, id: msg.id });
            continue;
          }
          occupied.set(at, String(args.id));
          deviceAdds.push(args);
        }
        if (msg.execute === 'device_del' && notFound.has(String(args.id))) {
          reply({ error: { class: 'DeviceNotFound', desc: `Device '${String(args.id)}' not found` }, id: msg.id });
          continue;
        }
        reply({ return: {}, id: msg.id });
        if (msg.execute === 'device_del' && !withhold.has(String(args.id))) {
          free(args.id);
          reply({ event: 'DEVICE_DELETED', data: { device: args.id } });
        }
        if (msg.execute === 'quit') onQuit();
      }
    });
  });
  server.listen(sock);
  return {
    server, commands, deviceAdds, withhold, notFound, refuseAdd,
    emit(event, data) {
      if (event === 'DEVICE_DELETED') free(data.device);
      conn?.write(`${JSON.stringify({ event, data })}\n`);
    },
  };
}
