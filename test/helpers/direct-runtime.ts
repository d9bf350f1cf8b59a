/**
 * Test double for the agent's OciRuntime: runs the spec's process directly on
 * the test host (no namespaces, no cgroups), so the agent's logic — process
 * bookkeeping, stdio, exit statuses, signals — is testable without a VM.
 * Exit status mirrors crun's foreground contract: the code, or 128+signal.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import type { OciRuntime, SpawnOptions } from '../../src/agent/oci-runtime';
import type { OciProcess, OciSpec } from '../../src/protocols/oci';

function envObject(env: string[] | undefined): NodeJS.ProcessEnv {
  const o: NodeJS.ProcessEnv = {};
  for (const e of env ?? []) o[e.slice(0, e.indexOf('='))] = e.slice(e.indexOf('=') + 1);
  return o;
}

/** Wraps the process so the child's exit code is 128+signal when killed, like crun. */
function spawnLikeCrun(p: OciProcess, stdio: SpawnOptions['stdio']): ChildProcess {
  const script = 'exec 3<&0; trap "" INT; "$@" 0<&3 3<&- & pid=$!; trap "kill -TERM $pid" TERM; wait $pid; s=$?; while kill -0 $pid 2>/dev/null; do wait $pid; s=$?; done; exit $s';
  return spawn('/bin/sh', ['-c', script, 'sh', ...p.args], { cwd: p.cwd, env: envObject(p.env), stdio: stdio ?? ['pipe', 'pipe', 'pipe'] });
}

export class DirectRuntime implements OciRuntime {
  readonly name = 'direct';
  readonly children = new Map<string, ChildProcess>();

  run(id: string, bundleDir: string, opts: SpawnOptions): ChildProcess {
    const spec = JSON.parse(fs.readFileSync(path.join(bundleDir, 'config.json'), 'utf8')) as OciSpec;
    const child = spawnLikeCrun(spec.process!, opts.stdio);
    this.children.set(id, child);
    return child;
  }

  exec(_id: string, processFile: string, opts: SpawnOptions): ChildProcess {
    const p = JSON.parse(fs.readFileSync(processFile, 'utf8')) as OciProcess;
    const child = spawnLikeCrun(p, opts.stdio);
    if (opts.pidFile) fs.writeFileSync(opts.pidFile, String(child.pid));
    return child;
  }

  async kill(id: string, signal: number): Promise<void> {
    const c = this.children.get(id);
    if (!c || c.exitCode !== null) throw new Error('container not running');
    // Signal the workload (child of the wrapper shell), as crun signals the container's init.
    const { execFileSync } = await import('node:child_process');
    const kids = execFileSync('ps', ['-o', 'pid=', '--ppid', String(c.pid)], { encoding: 'utf8' }).trim().split(/\s+/).filter(Boolean);
    for (const k of kids) process.kill(Number(k), signal);
  }

  async delete(id: string): Promise<void> {
    this.children.delete(id);
  }

  async pid(id: string): Promise<number> {
    return this.children.get(id)?.pid ?? 0;
  }

  async version(): Promise<string> {
    return 'direct-test-double';
  }
}
