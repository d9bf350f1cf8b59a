/**
 * Command line of a containerd runtime v2 shim, as containerd 1.6 passes it
 * (runtime/v2/shim/shim.go): Go `flag` syntax — `-name value`, `-name=value`,
 * `--name` alike, booleans without a value — then the action (`start`,
 * `delete`, or our internal `serve`). Unknown flags are errors, as in Go.
 */
import { KataError } from '../common/errors';

export class FlagsError extends KataError<'usage'> {}

export interface ShimFlags {
  namespace: string;
  address: string;
  publishBinary: string;
  id: string;
  bundle: string;
  debug: boolean;
  /** serve only: the unix socket to listen on (chosen by `start`). */
  socket: string;
  action: string;
}

const STRING_FLAGS: Record<string, keyof ShimFlags> = {
  namespace: 'namespace', address: 'address', 'publish-binary': 'publishBinary', id: 'id', bundle: 'bundle', socket: 'socket',
};

export function parseFlags(argv: string[]): ShimFlags {
  const f: ShimFlags = { namespace: '', address: '', publishBinary: '', id: '', bundle: '', debug: false, socket: '', action: '' };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-') || a === '-') break;
    const body = a.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = eq >= 0 ? body.slice(0, eq) : body;
    if (name === 'debug' || name === 'v') {
      if (name === 'v') f.action = 'version';
      else f.debug = eq < 0 || body.slice(eq + 1) !== 'false';
      continue;
    }
    const key = STRING_FLAGS[name];
    if (!key) throw new FlagsError('usage', `flag provided but not defined: -${name}`);
    let value: string;
    if (eq >= 0) value = body.slice(eq + 1);
    else {
      if (i + 1 >= argv.length) throw new FlagsError('usage', `flag needs an argument: -${name}`);
      value = argv[++i]!;
    }
    (f as unknown as Record<string, string>)[key] = value;
  }
  if (!f.action) f.action = argv[i] ?? '';
  return f;
}

/** Back to argv, for `start` re-executing itself as `serve`. */
export function formatFlags(f: ShimFlags): string[] {
  const out: string[] = [];
  for (const [flag, key] of Object.entries(STRING_FLAGS)) {
    const v = f[key] as string;
    if (v) out.push(`-${flag}`, v);
  }
  if (f.debug) out.push('-debug');
  return out;
}
