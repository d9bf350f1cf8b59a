/**
 * A strict parser for the Prometheus text exposition format 0.0.4, written
 * from the format's description (prometheus.io/docs/instrumenting/
 * exposition_formats) independently of src/ctl/prometheus.ts, so tests check
 * our output against the format rather than against itself. Throws on: bad
 * metric/label names, bad escapes, unparsable values, a TYPE after samples
 * of its family, a family split in two, duplicate HELP/TYPE, duplicate series.
 */
export interface ParsedSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface ParsedFamily {
  name: string;
  help?: string;
  type?: string;
  samples: ParsedSample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function parseValue(s: string, line: number): number {
  if (s === 'NaN') return NaN;
  if (s === '+Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(s)) throw new Error(`line ${line}: bad value "${s}"`);
  return Number(s);
}

function parseLabels(s: string, line: number): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 1; // after '{'
  for (;;) {
    while (s[i] === ' ') i++;
    if (s[i] === '}') return { labels, rest: s.slice(i + 1) };
    const m = LABEL.exec(s.slice(i));
    if (!m) throw new Error(`line ${line}: bad label name at "${s.slice(i)}"`);
    const name = m[0];
    i += name.length;
    if (s[i] !== '=' || s[i + 1] !== '"') throw new Error(`line ${line}: expected ="`);
    i += 2;
    let v = '';
    for (;;) {
      const c = s[i];
      if (c === undefined) throw new Error(`line ${line}: unterminated label value`);
      if (c === '"') break;
      if (c === '\\') {
        const n = s[i + 1];
        if (n === 'n') v += '\n';
        else if (n === '\\' || n === '"') v += n;
        else throw new Error(`line ${line}: bad escape \\${n}`);
        i += 2;
        continue;
      }
      v += c;
      i++;
    }
    i++;
    if (name in labels) throw new Error(`line ${line}: duplicate label ${name}`);
    labels[name] = v;
    if (s[i] === ',') i++;
    else if (s[i] !== '}') throw new Error(`line ${line}: expected , or }`);
  }
}

export function parsePrometheus(text: string): Map<string, ParsedFamily> {
  if (text.length && !text.endsWith('\n')) throw new Error('exposition must end with a newline');
  const fams = new Map<string, ParsedFamily>();
  const closed = new Set<string>();
  let current: string | undefined;
  const series = new Set<string>();
  const fam = (name: string, n: number): ParsedFamily => {
    if (current !== name) {
      if (current) closed.add(current);
      if (closed.has(name)) throw new Error(`line ${n}: family ${name} is not contiguous`);
      current = name;
    }
    let f = fams.get(name);
    if (!f) fams.set(name, (f = { name, samples: [] }));
    return f;
  };
  text.split('\n').forEach((raw, idx) => {
    const n = idx + 1;
    const line = raw.trim();
    if (!line) return;
    if (line.startsWith('#')) {
      const m = /^#\s+(HELP|TYPE)\s+(\S+)\s*(.*)$/.exec(line);
      if (!m) return; // a plain comment
      const [, kind, name, rest] = m as unknown as [string, string, string, string];
      if (!NAME.test(name) || NAME.exec(name)![0] !== name) throw new Error(`line ${n}: bad metric name ${name}`);
      const f = fam(name, n);
      if (kind === 'HELP') {
        if (f.help !== undefined) throw new Error(`line ${n}: second HELP for ${name}`);
        f.help = rest;
      } else {
        if (f.type !== undefined) throw new Error(`line ${n}: second TYPE for ${name}`);
        if (f.samples.length) throw new Error(`line ${n}: TYPE for ${name} after its samples`);
        if (!TYPES.has(rest)) throw new Error(`line ${n}: bad type ${rest}`);
        f.type = rest;
      }
      return;
    }
    const m = NAME.exec(line);
    if (!m) throw new Error(`line ${n}: bad sample "${line}"`);
    const name = m[0];
    let rest = line.slice(name.length);
    let labels: Record<string, string> = {};
    if (rest.startsWith('{')) ({ labels, rest } = parseLabels(rest, n));
    const parts = rest.trim().split(/\s+/);
    if (parts.length < 1 || parts.length > 2 || !rest.startsWith(' ')) throw new Error(`line ${n}: expected value [timestamp]`);
    const value = parseValue(parts[0]!, n);
    if (parts[1] !== undefined && !/^-?\d+$/.test(parts[1])) throw new Error(`line ${n}: bad timestamp`);
    const key = name + JSON.stringify(Object.entries(labels).sort());
    if (series.has(key)) throw new Error(`line ${n}: duplicate series ${key}`);
    series.add(key);
    fam(name, n).samples.push({ name, labels, value });
  });
  return fams;
}

/** The one sample of `name` whose labels include `match`. */
export function sampleOf(fams: Map<string, ParsedFamily>, name: string, match: Record<string, string> = {}): ParsedSample | undefined {
  return fams.get(name)?.samples.find((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v));
}
