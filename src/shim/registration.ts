/**
 * Binds TaskService onto a ttrpc server as containerd.task.v2.Task: per
 * method, the request/response protobuf types, decoding (InvalidArgument on
 * garbage) and the error edge (toTtrpcError).
 */
import { decodeRequest, type TtrpcServer } from '../protocols/ttrpc/server';
import { encode } from '../protocols/ttrpc/messages';
import { logger, type Logger } from '../common/log';
import { toTtrpcError } from './errors';
import type { TaskService } from './service';

export const TASK_SERVICE = 'containerd.task.v2.Task';
const P = 'containerd.task.v2.';
const EMPTY = 'google.protobuf.Empty';

type Method = [req: string, res: string, call: (svc: TaskService, r: never) => Promise<unknown>];

export const TASK_METHODS: Record<string, Method> = {
  State: [`${P}StateRequest`, `${P}StateResponse`, (s, r) => s.state(r)],
  Create: [`${P}CreateTaskRequest`, `${P}CreateTaskResponse`, (s, r) => s.create(r)],
  Start: [`${P}StartRequest`, `${P}StartResponse`, (s, r) => s.start(r)],
  Delete: [`${P}DeleteRequest`, `${P}DeleteResponse`, (s, r) => s.delete(r)],
  Pids: [`${P}PidsRequest`, `${P}PidsResponse`, (s, r) => s.pids(r)],
  Pause: [`${P}PauseRequest`, EMPTY, (s, r) => s.pause(r)],
  Resume: [`${P}ResumeRequest`, EMPTY, (s, r) => s.resume(r)],
  Checkpoint: [`${P}CheckpointTaskRequest`, EMPTY, (s) => s.checkpoint()],
  Kill: [`${P}KillRequest`, EMPTY, (s, r) => s.kill(r)],
  Exec: [`${P}ExecProcessRequest`, EMPTY, (s, r) => s.exec(r)],
  ResizePty: [`${P}ResizePtyRequest`, EMPTY, (s, r) => s.resizePty(r)],
  CloseIO: [`${P}CloseIORequest`, EMPTY, (s, r) => s.closeIO(r)],
  Update: [`${P}UpdateTaskRequest`, EMPTY, (s, r) => s.update(r)],
  Wait: [`${P}WaitRequest`, `${P}WaitResponse`, (s, r) => s.wait(r)],
  Stats: [`${P}StatsRequest`, `${P}StatsResponse`, (s, r) => s.stats(r)],
  Connect: [`${P}ConnectRequest`, `${P}ConnectResponse`, (s, r) => s.connect(r)],
  Shutdown: [`${P}ShutdownRequest`, EMPTY, (s, r) => s.shutdown(r)],
};

export function registerTaskService(server: TtrpcServer, svc: TaskService): void {
  let log: Logger | undefined;
  for (const [name, [reqType, resType, call]] of Object.entries(TASK_METHODS)) {
    server.register(TASK_SERVICE, name, async (payload) => {
      const req = decodeRequest<never>(reqType, payload);
      const t0 = Date.now();
      try {
        const res = await call(svc, req);
        return encode(resType, (res ?? {}) as Record<string, unknown>);
      } catch (err) {
        throw toTtrpcError(err, name);
      } finally {
        // Per task RPC at debug level: where a `ctr run` spends its time (README, VM templates).
        (log ??= logger('shim')).debug('task rpc', { rpc: name, id: (req as { id?: string }).id, ms: Date.now() - t0 });
      }
    });
  }
}
