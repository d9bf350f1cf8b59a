/**
 * `kata-ctl install containerd` / `kata-ctl uninstall containerd`: add or
 * remove the kata-ts runtime handler in containerd's config.toml (the
 * snippet and the rules: src/ctl/containerd-config.ts), as Kata's
 * kata-deploy does. containerd reads its config only at start: the command
 * says to restart it, and does not do it itself. `--config-path FILE` gives
 * the handler its own configuration (containerd's runtime option
 * ConfigPath, as Kata's handlers do), so several handlers can differ.
 */
import type { CtlCommand } from '../command';
import { JSON_OPTION, printJson, type GlobalArgs } from '../common';
import { DEFAULT_CONTAINERD_CONFIG, DEFAULT_HANDLER, installContainerdRuntime, uninstallContainerdRuntime, type ConfigChange } from '../containerd-config';

interface InstallArgs extends GlobalArgs {
  target: string;
  containerdConfig: string;
  handler: string;
  backup: boolean;
  dryRun: boolean;
  configPath?: string;
}

const builder = (verb: string) => (y: import('yargs').Argv) => y
  .positional('target', { type: 'string', choices: ['containerd'], describe: `what to ${verb} kata-ts into` })
  .option('containerd-config', { type: 'string', default: DEFAULT_CONTAINERD_CONFIG, describe: 'containerd config file (version 2)' })
  .option('handler', { type: 'string', default: DEFAULT_HANDLER, describe: 'runtime handler name (the RuntimeClass handler)' })
  .option('backup', { type: 'boolean', default: true, describe: 'copy the file to <file>.kata-ts.bak before changing it (--no-backup: do not)' })
  .option('dry-run', { type: 'boolean', default: false, describe: 'print the resulting file, change nothing' })
  .option('config-path', { type: 'string', describe: 'install only: this handler\'s kata-ts configuration file (absolute), written as the runtime option ConfigPath that containerd passes to the shim' })
  .option('json', JSON_OPTION) as never;

function report(verb: 'install' | 'uninstall', argv: InstallArgs, r: ConfigChange): number {
  if (argv.json) {
    printJson({ schemaVersion: 1, action: verb, file: r.file, handler: argv.handler, changed: r.changed, dryRun: argv.dryRun, backup: r.backup ?? null, warnings: r.warnings });
    return 0;
  }
  for (const w of r.warnings) process.stderr.write(`kata-ctl: warning: ${w}\n`);
  if (argv.dryRun) {
    process.stdout.write(r.text);
    return 0;
  }
  if (!r.changed) {
    process.stdout.write(verb === 'install'
      ? `${r.file}: runtime handler "${argv.handler}" already installed; nothing changed\n`
      : `${r.file}: no runtime handler "${argv.handler}" written by kata-ctl; nothing changed\n`);
    return 0;
  }
  process.stdout.write(verb === 'install'
    ? `${r.file}: added runtime handler "${argv.handler}" (runtime_type io.containerd.kata-ts.v2)\n`
    : `${r.file}: removed runtime handler "${argv.handler}"\n`);
  if (r.backup) process.stdout.write(`previous content saved to ${r.backup}\n`);
  process.stdout.write('restart containerd to apply it (e.g. systemctl restart containerd)\n');
  return 0;
}

export const installCommand: CtlCommand<InstallArgs> = {
  command: 'install <target>',
  describe: 'add the kata-ts runtime handler to containerd\'s config (CRI plugin)',
  builder: builder('install'),
  handler: async (argv) => report('install', argv, installContainerdRuntime(argv.containerdConfig, { handler: argv.handler, backup: argv.backup, dryRun: argv.dryRun, configPath: argv.configPath })),
};

export const uninstallCommand: CtlCommand<InstallArgs> = {
  command: 'uninstall <target>',
  describe: 'remove the kata-ts runtime handler that install added to containerd\'s config',
  builder: builder('uninstall'),
  handler: async (argv) => report('uninstall', argv, uninstallContainerdRuntime(argv.containerdConfig, { handler: argv.handler, backup: argv.backup, dryRun: argv.dryRun, configPath: argv.configPath })),
};
