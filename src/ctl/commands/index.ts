/** Registry of kata-ctl subcommands; add one import + one entry per command module. */
import type { CtlCommand } from '../command';
import { erofsCommand } from './erofs';
import { checkCommand } from './check';
import { envCommand } from './env';
import { listCommand } from './list';
import { cleanupCommand } from './cleanup';
import { execCommand } from './exec';
import { metricsCommand } from './metrics';
import { installCommand, uninstallCommand } from './install';
import { versionCommand } from './version';
import { logParserCommand } from './log-parser';
import { imageCommand } from './image';
import { balloonCommand } from './balloon';
import { ksmCommand } from './ksm';
import { pagesCommand } from './pages';
import { factoryCommand } from './factory';
import { directVolumeCommand } from './direct-volume';

export const commands: CtlCommand<any>[] = [];
commands.push(erofsCommand);
commands.push(checkCommand, envCommand, listCommand, cleanupCommand, execCommand, metricsCommand);
commands.push(installCommand, uninstallCommand);
commands.push(versionCommand, logParserCommand);
commands.push(imageCommand);
commands.push(factoryCommand);
commands.push(balloonCommand, ksmCommand, pagesCommand);
commands.push(directVolumeCommand);
