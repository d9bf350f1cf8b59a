/**
 * A writer for the Prometheus text exposition format 0.0.4
 * (prometheus.io/docs/instrumenting/exposition_formats): per family one
 * `# HELP`, one `# TYPE`, then its samples, contiguous; label values escape
 * backslash, double quote and newline; HELP text escapes backslash and newline.
 */
export type MetricType = 'counter' | 'gauge';

export interface Sample {
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  help: string;
  type: MetricType;
  samples: Sample[];
}

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

export function render(families: Family[]): string {
  const out: string[] = [];
  for (const f of families) {
    if (!NAME_RE.test(f.name)) throw new Error(`invalid metric name ${f.name}`);
    out.push(`# HELP ${f.name} ${f.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`);
    out.push(`# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const labels = Object.entries(s.labels).map(([k, v]) => {
        if (!LABEL_RE.test(k) || k.startsWith('__')) throw new Error(`invalid label name ${k}`);
        return `${k}="${escapeLabelValue(v)}"`;
      });
      out.push(`${f.name}${labels.length ? `{${labels.join(',')}}` : ''} ${formatValue(s.value)}`);
    }
  }
  return out.join('\n') + '\n';
}

/** Families by name, created in first-use order (so output order is stable). */
export class Registry {
  private readonly families = new Map<string, Family>();

  family(name: string, type: MetricType, help: string): Family {
    let f = this.families.get(name);
    if (!f) {
      f = { name, type, help, samples: [] };
      this.families.set(name, f);
    }
    return f;
  }

  add(name: string, type: MetricType, help: string, labels: Record<string, string>, value: number): void {
    this.family(name, type, help).samples.push({ labels, value });
  }

  render(): string {
    return render([...this.families.values()]);
  }
}
