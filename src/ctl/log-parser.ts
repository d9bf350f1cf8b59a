/**
 * `kata-ctl log-parser`: one time-ordered view of a sandbox's logs, as Kata's
 * kata-log-parser gives for the runtime, shim, proxy and agent.
 *
 * Where each kata-ts log goes (src/common/log.ts writes every one as a JSON
 * line with time, level, msg, source and fields):
 * - kata-ts (the CLI runtime): its stderr;
 * - the shim (source containerd-shim-kata-ts-v2): the bundle's `log` fifo,
 *   which containerd copies verbatim to its own output (journald: the JSON
 *   follows a "containerd[pid]: " prefix);
 * - the agent (source agent): the guest console, kept by the hypervisor in
 *   <run_dir>/sandboxes/<id>/console.log next to firmware and kernel lines.
 * So every line is searched for a JSON object carrying `time`; other lines
 * (kernel, firmware, prefixes) are skipped and counted. Entries are ordered
 * by time, ties by input order (file, then line); the agent's times come from
 * the guest clock (kvmclock: the host's time, give or take a few ms).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../common/errors';
import { sandboxesDir } from '../runtime/state';

export class LogParserError extends KataError<'unreadable' | 'not-found'> {}

export interface LogEntry {
  time: string;
  level: string;
  source: string;
  msg: string;
  /** Every other field of the line, as logged. */
  fields: Record<string, unknown>;
  file: string;
  line: number;
}

export interface ParseStats {
  files: number;
  lines: number;
  entries: number;
  /** Lines that hold no JSON log entry (kernel, firmware, plain text). */
  skipped: number;
}

const LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type Level = (typeof LEVELS)[number];

/** The JSON log entry in one line, or undefined (a line of something else). */
export function parseLogLine(text: string, file: string, line: number): LogEntry | undefined {
  const at = text.indexOf('{');
  if (at < 0) return undefined;
  let obj: unknown;
  try {
    obj = JSON.parse(text.slice(at).replace(/\r$/, ''));
  } catch {
    return undefined;
  }
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) return undefined;
  const o = obj as Record<string, unknown>;
  if (typeof o.time !== 'string' || Number.isNaN(Date.parse(o.time))) return undefined;
  const { time, level, source, msg, ...fields } = o;
  return {
    time: time as string,
    level: typeof level === 'string' ? level : 'info',
    source: typeof source === 'string' ? source : path.basename(file),
    msg: typeof msg === 'string' ? msg : JSON.stringify(msg ?? ''),
    fields, file, line,
  };
}

/** The sandbox id an entry names, if any (sandbox, sandboxId, sandbox_id). */
function sandboxOf(e: LogEntry): string | undefined {
  const v = e.fields.sandbox ?? e.fields.sandboxId ?? e.fields.sandbox_id;
  return typeof v === 'string' ? v : undefined;
}

export interface MergeOptions {
  /** Keep entries at this level or more severe. */
  level?: Level;
  /** Keep entries naming this sandbox or naming none. */
  sandbox?: string;
}

/** Merges the entries of several logs into one time-ordered list. */
export function mergeLogs(inputs: { file: string; text: string }[], opts: MergeOptions = {}): { entries: LogEntry[]; stats: ParseStats } {
  const stats: ParseStats = { files: inputs.length, lines: 0, entries: 0, skipped: 0 };
  const keep = opts.level ? LEVELS.indexOf(opts.level) : LEVELS.length - 1;
  const all: { e: LogEntry; t: number; seq: number }[] = [];
  for (const { file, text } of inputs) {
    const lines = text.split('\n');
    if (lines[lines.length - 1] === '') lines.pop();
    lines.forEach((l, i) => {
      stats.lines++;
      const e = parseLogLine(l, file, i + 1);
      if (!e) {
        stats.skipped++;
        return;
      }
      const rank = LEVELS.indexOf(e.level as Level);
      if (rank > keep) return;
      if (opts.sandbox) {
        const sb = sandboxOf(e);
        if (sb !== undefined && sb !== opts.sandbox) return;
      }
      all.push({ e, t: Date.parse(e.time), seq: all.length });
    });
  }
  all.sort((a, b) => a.t - b.t || a.seq - b.seq);
  stats.entries = all.length;
  return { entries: all.map((x) => x.e), stats };
}

/** The logs kata-ts keeps for a sandbox under run_dir: the guest console (agent). */
export function sandboxLogFiles(runDir: string, id: string): string[] {
  const dir = path.join(sandboxesDir(runDir), id);
  if (!fs.existsSync(dir)) throw new LogParserError('not-found', `no sandbox ${id} under ${sandboxesDir(runDir)} (its console log lives there only while it runs)`);
  return fs.readdirSync(dir).filter((f) => f.endsWith('.log')).sort().map((f) => path.join(dir, f));
}

export function readLogs(files: string[], stdin?: () => string): { file: string; text: string }[] {
  return files.map((f) => {
    if (f === '-') return { file: '-', text: stdin ? stdin() : fs.readFileSync(0, 'utf8') };
    try {
      return { file: f, text: fs.readFileSync(f, 'utf8') };
    } catch (err) {
      throw new LogParserError('unreadable', `cannot read log ${f}: ${(err as Error).message}`, { cause: err });
    }
  });
}

function fieldText(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

/** One line per entry: time level source msg key=value … (file:line). */
export function entryText(e: LogEntry): string {
  const f = Object.entries(e.fields).map(([k, v]) => `${k}=${fieldText(v)}`).join(' ');
  return `${e.time} ${e.level.padEnd(5)} ${e.source} ${e.msg}${f ? ` ${f}` : ''} (${path.basename(e.file)}:${e.line})`;
}
