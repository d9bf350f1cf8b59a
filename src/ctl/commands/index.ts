/** Registry of kata-ctl subcommands; add one import + one entry per command module. */
import type { CtlCommand } from '../command';
import { erofsCommand } from './erofs';

export const commands: CtlCommand<any>[] = [];
commands.push(erofsCommand);
