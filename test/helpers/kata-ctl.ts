/** Runs the real `kata-ctl` launcher (bin/kata-ctl) as a child process, for CLI-level tests. */
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { REPO } from './guest';

export interface CtlResult { code: number | null; stdout: string; stderr: string }

export function kataCtl(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CtlResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO, 'bin', 'kata-ctl'), ...args], {
      env: { ...process.env, KATA_TS_CONFIG: '', ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60000);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}
