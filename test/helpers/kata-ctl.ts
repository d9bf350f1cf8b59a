/** Runs the real `kata-ctl` launcher (bin/kata-ctl) as a child process, for CLI-level tests. */
import * as path from 'node:path';
import { REPO } from './guest';
import { runCommand, type CommandResult } from './spawn';

export type CtlResult = CommandResult;

export function kataCtl(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CtlResult> {
  return runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ctl'), ...args], {
    input: opts.input ?? '', env: { KATA_TS_CONFIG: '', ...opts.env }, timeoutMs: opts.timeoutMs ?? 60000,
  });
}
