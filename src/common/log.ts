/**
 * Structured logging for every kata-ts process (CLI, shim, agent).
 *
 * JSON lines through winston, the shape Kata users grep for: time, level,
 * msg, source (which component) and any fields. The CLI logs to stderr; the
 * shim logs to containerd's log pipe (the caller passes the stream); the agent
 * logs to its console so the host can collect it. Level comes from the
 * configuration or `--debug`.
 */
import winston from 'winston';
import type { Writable } from 'node:stream';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export type Logger = winston.Logger;

let root: winston.Logger | undefined;

/** Kata's log line shape (logrus JSON): time, level, msg, then fields. */
const kataShape = winston.format((info) => {
  const { message, level, ...rest } = info;
  const out = info as Record<string | symbol, unknown>;
  for (const k of Object.keys(rest)) delete out[k];
  delete out.message;
  Object.assign(out, { time: new Date().toISOString(), level, msg: message, ...rest });
  return info;
});

export interface LogOptions {
  level?: LogLevel;
  /** Where JSON lines go; default process.stderr. */
  stream?: Writable;
  /** Component name, e.g. "kata-ts", "shim", "agent". */
  source?: string;
  /** Silence all output (tests). */
  silent?: boolean;
}

export function configureLogging(opts: LogOptions = {}): winston.Logger {
  root = winston.createLogger({
    level: opts.level ?? (process.env.KATA_TS_LOG_LEVEL as LogLevel | undefined) ?? 'warn',
    silent: opts.silent ?? false,
    defaultMeta: { source: opts.source ?? 'kata-ts', pid: process.pid },
    format: winston.format.combine(winston.format.errors({ stack: false }), kataShape(), winston.format.json()),
    transports: [new winston.transports.Stream({ stream: opts.stream ?? process.stderr })],
  });
  return root;
}

/** A child logger for one module; fields are added to every line. */
export function logger(name: string, fields: Record<string, unknown> = {}): winston.Logger {
  if (!root) configureLogging({ silent: process.env.KATA_TS_LOG_LEVEL === undefined && !!process.env.MOCHA_WORKER_ID });
  return root!.child({ module: name, ...fields });
}
