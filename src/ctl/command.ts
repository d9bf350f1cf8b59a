/**
 * The shape every `kata-ctl` subcommand module exports, so src/cli/kata-ctl.ts
 * stays a list of registrations: each file under src/ctl/commands/ owns one
 * verb (argument parsing + calling into the layers below + printing).
 */
import type { Argv, ArgumentsCamelCase } from 'yargs';

export interface CtlCommand<A = Record<string, unknown>> {
  command: string | string[];
  describe: string;
  builder: (y: Argv) => Argv<A>;
  /** Returns the process exit code. */
  handler: (argv: ArgumentsCamelCase<A>) => Promise<number>;
}
