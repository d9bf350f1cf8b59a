/** Registry of kata-ctl subcommands; add one import + one entry per command module. */
import type { CtlCommand } from '../command';

export const commands: CtlCommand<any>[] = [];
