/**
 * Structured logging for every kata-ts process (CLI, shim, agent).
 *
 * JSON lines through winston, the shape Kata users grep for: time, level,
 * msg, source (which component) and any fields. The CLI logs to stderr; the
 * shim logs to containerd's log pipe (the caller passes the stream); the agent
 * logs to its console so the host can collect it. Level comes from the
 * configuration or `--debug`.
 *
 * winston is loaded on the first line that is actually written, not at
 * start-up: `kata-ts run` at the default level writes none before its VM is
 * up, and loading winston (~60 ms quiet, 0.2 s at a load of 12 on this
 * host's 2 cores) was on the path to spawning QEMU. A logger() is a thin
 * object that drops lines below the configured level without touching
 * winston, and resolves its winston child on first use (again after a later
 * configureLogging(), which the old eager children did not follow).
 */
import type winston from 'winston';
import type { Writable } from 'node:stream';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export type Logger = winston.Logger;

export interface LogOptions {
  level?: LogLevel;
  /** Where JSON lines go; default process.stderr. */
  stream?: Writable;
  /** Component name, e.g. "kata-ts", "shim", "agent". */
  source?: string;
  /** Silence all output (tests). */
  silent?: boolean;
}

/** The configuration in force; bumped `generation` makes children re-resolve. */
let options: LogOptions | undefined;
let generation = 0;
let root: winston.Logger | undefined;

/** Severity order of our levels (winston's npm levels agree on these four). */
const SEVERITY: Record<string, number> = { error: 0, warn: 1, info: 2, debug: 5 };

function currentOptions(): LogOptions {
  if (!options) options = { silent: process.env.KATA_TS_LOG_LEVEL === undefined && !!process.env.MOCHA_WORKER_ID };
  return options;
}

function levelOf(o: LogOptions): string {
  return o.level ?? process.env.KATA_TS_LOG_LEVEL ?? 'warn';
}

/** Whether a line at `level` would be written (unknown levels: let winston decide). */
function enabled(level: string): boolean {
  const o = currentOptions();
  if (o.silent) return false;
  const max = SEVERITY[levelOf(o)];
  const l = SEVERITY[level];
  return max === undefined || l === undefined || l <= max;
}

function winstonRoot(): winston.Logger {
  if (root) return root;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const w = require('winston') as typeof winston;
  const o = currentOptions();
  /** Kata's log line shape (logrus JSON): time, level, msg, then fields. */
  const kataShape = w.format((info) => {
    const { message, level, ...rest } = info;
    const out = info as Record<string | symbol, unknown>;
    for (const k of Object.keys(rest)) delete out[k];
    delete out.message;
    Object.assign(out, { time: new Date().toISOString(), level, msg: message, ...rest });
    return info;
  });
  root = w.createLogger({
    level: levelOf(o),
    silent: o.silent ?? false,
    defaultMeta: { source: o.source ?? 'kata-ts', pid: process.pid },
    format: w.format.combine(w.format.errors({ stack: false }), kataShape(), w.format.json()),
    transports: [new w.transports.Stream({ stream: o.stream ?? process.stderr })],
  });
  return root;
}

type Method = 'error' | 'warn' | 'info' | 'debug';

/** A logger whose winston child is made on the first line written. */
function lazyLogger(fields: Record<string, unknown>): winston.Logger {
  let child: winston.Logger | undefined;
  let childGen = -1;
  const resolve = () => {
    if (!child || childGen !== generation) {
      child = winstonRoot().child(fields);
      childGen = generation;
    }
    return child;
  };
  const method = (m: Method) => (...args: unknown[]) => {
    if (enabled(m)) (resolve()[m] as (...a: unknown[]) => unknown)(...args);
    return self;
  };
  const self = {
    error: method('error'), warn: method('warn'), info: method('info'), debug: method('debug'),
    child: (more: Record<string, unknown>) => lazyLogger({ ...fields, ...more }),
    isLevelEnabled: (level: string) => enabled(level),
  } as unknown as winston.Logger;
  return self;
}

export function configureLogging(opts: LogOptions = {}): winston.Logger {
  options = { ...opts };
  generation++;
  root = undefined;
  return lazyLogger({});
}

/** A child logger for one module; fields are added to every line. */
export function logger(name: string, fields: Record<string, unknown> = {}): winston.Logger {
  return lazyLogger({ module: name, ...fields });
}
