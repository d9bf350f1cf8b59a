/**
 * Chart images for the bench results (issue 3): reads every
 * build/bench/<name>.json and writes build/bench/<name>.svg — horizontal bar
 * charts, one panel per result set, our own small SVG writer (no chart
 * dependency). What is drawn, per JSON object:
 *   - a "ratios" object (or keys named ratio*): one bar per ratio, a line at
 *     1.0× and, where issue 3 sets one, a dashed goal line;
 *   - otherwise sibling objects with the same numeric keys (ours vs a peer,
 *     e.g. vsock device/peer, virtiofs virtiofs/erofs, blk runs): the ratio
 *     first ÷ each other sibling, per key (medians for arrays of runs);
 *   - otherwise any object with two or more numbers: the raw values, scaled
 *     to the largest (unit in the panel title when the JSON names one).
 *
 *   node dist/bench/chart.js [name ...]     (default: every JSON there)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from './native';
import { median } from './stats';

export interface Bar { label: string; value: number; goal?: number }
export interface Panel { title: string; bars: Bar[]; ratio: boolean }

/** Goals from issue 3, matched against "<panel title> / <bar label>". */
const GOALS: Array<[RegExp, number]> = [
  [/hot-virtqueue.*as \/ c$/, 0.7],
  [/hot-virtqueue.*as \/ plain-ts$/, 3],
  [/hot-lz4.*as decode \/ (liblz4|lz4 -b1) decode$/, 0.6],
  [/hot-pagehash.*as \/ (c-xxh64\+zero|lib-xxh64|xxhsum-b XXH64)$/, 0.8],
];

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
const isObj = (v: Json | undefined): v is { [k: string]: Json } => !!v && typeof v === 'object' && !Array.isArray(v);


/** Numeric fields of an object; arrays of numbers or of objects of numbers become medians. */
function numbers(o: Json): Record<string, number> {
  const out: Record<string, number> = {};
  if (Array.isArray(o) && o.every(isObj)) {
    const keys = new Set(o.flatMap((x) => Object.keys(x as object)));
    for (const k of keys) {
      const xs = o.map((x) => (x as Record<string, Json>)[k]).filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
      if (xs.length) out[k] = median(xs);
    }
    return out;
  }
  if (!isObj(o)) return out;
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
    else if (Array.isArray(v) && v.length && v.every((x) => typeof x === 'number')) out[k] = median(v as number[]);
  }
  return out;
}

export function panels(name: string, root: Json): Panel[] {
  const out: Panel[] = [];
  const unit = isObj(root) && typeof root.unit === 'string' ? root.unit : '';
  const walk = (o: Json, where: string[]) => {
    if (!isObj(o)) return;
    const title = [name, ...where].join(' · ');
    const goalOf = (label: string) => GOALS.find(([re]) => re.test(`${title} / ${label}`))?.[1];
    const ratioKeys = Object.keys(o).filter((k) => /^ratio/i.test(k) && typeof o[k] === 'number');
    if (ratioKeys.length) out.push({ title, ratio: true, bars: ratioKeys.map((k) => ({ label: k, value: o[k] as number, goal: goalOf(k) })) });
    if (isObj(o.ratios)) {
      const bars = Object.entries(numbers(o.ratios)).map(([k, v]) => ({ label: k, value: v, goal: goalOf(k) }));
      if (bars.length) out.push({ title: `${title} (ratios)`, ratio: true, bars });
      for (const [k, v] of Object.entries(o)) if (k !== 'ratios' && k !== 'machine') walk(v, [...where, k]);
      return;
    }
    // Sibling peers with shared numeric keys: first ÷ each other.
    const sibs = Object.entries(o).map(([k, v]) => [k, numbers(v)] as const).filter(([k, n]) => Object.keys(n).length >= 1 && !/^samples/i.test(k));
    const groups = sibs.filter(([, n]) => sibs.some(([, m]) => m !== n && Object.keys(n).some((key) => key in m)));
    if (groups.length >= 2 && !groups.some(([k]) => k === 'machine')) {
      const [first, fn] = groups[0];
      const bars: Bar[] = [];
      for (const [other, on] of groups.slice(1)) {
        for (const key of Object.keys(fn)) if (key in on && on[key] !== 0) bars.push({ label: `${key}: ${first} / ${other}`, value: fn[key] / on[key] });
      }
      if (bars.length) out.push({ title: `${title} (ratios)`, ratio: true, bars });
      return;
    }
    const own = numbers(o);
    for (const k of ratioKeys) delete own[k];
    if (!/^samples/i.test(where[where.length - 1] ?? '') && Object.keys(own).length >= 2 && where[where.length - 1] !== 'machine') {
      out.push({ title: `${title}${unit && /^(rates|mbps|gbps)$/.test(where[where.length - 1] ?? '') ? ` (${unit})` : ''}`, ratio: false, bars: Object.entries(own).map(([k, v]) => ({ label: k, value: v })) });
    }
    for (const [k, v] of Object.entries(o)) if (k !== 'machine' && isObj(v)) walk(v, [...where, k]);
  };
  walk(root, []);
  return out;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const fmt = (v: number) => {
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(2)} G`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(2)} M`;
  if (a >= 1e5) return `${(v / 1e3).toFixed(1)} k`;
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
};

export function svg(heading: string, ps: Panel[]): string {
  const W = 860, LABEL = 330, BAR_H = 18, GAP = 6, PAD = 16, TITLE = 26;
  const plotW = W - LABEL - PAD - 70;
  const parts: string[] = [];
  let y = PAD + 20;
  parts.push(`<text x="${PAD}" y="${y}" font-size="16" font-weight="bold">${esc(heading)}</text>`);
  y += 12;
  for (const p of ps) {
    y += TITLE;
    parts.push(`<text x="${PAD}" y="${y - 8}" font-size="13" font-weight="bold">${esc(p.title)}</text>`);
    const max = Math.max(...p.bars.map((b) => Math.max(b.value, b.goal ?? 0)), p.ratio ? 1 : 0) * 1.05 || 1;
    const x0 = LABEL;
    const sx = (v: number) => x0 + (Math.max(0, v) / max) * plotW;
    const top = y;
    for (const b of p.bars) {
      const short = b.goal !== undefined && b.value < b.goal;
      const fill = !p.ratio ? '#6b8fb5' : short ? '#d9822b' : b.value >= 1 || b.goal !== undefined ? '#3a9a5b' : '#6b8fb5';
      parts.push(`<text x="${x0 - 8}" y="${y + BAR_H - 5}" font-size="12" text-anchor="end">${esc(b.label)}</text>`);
      parts.push(`<rect x="${x0}" y="${y}" width="${(sx(b.value) - x0).toFixed(1)}" height="${BAR_H}" fill="${fill}"/>`);
      parts.push(`<text x="${(sx(b.value) + 4).toFixed(1)}" y="${y + BAR_H - 5}" font-size="12">${fmt(b.value)}${p.ratio ? '×' : ''}${b.goal !== undefined ? ` (goal ≥ ${b.goal}×)` : ''}</text>`);
      if (b.goal !== undefined) {
        const gx = sx(b.goal).toFixed(1);
        parts.push(`<line x1="${gx}" x2="${gx}" y1="${y - 2}" y2="${y + BAR_H + 2}" stroke="#b03030" stroke-width="2" stroke-dasharray="3,2"/>`);
      }
      y += BAR_H + GAP;
    }
    if (p.ratio) {
      const ox = sx(1).toFixed(1);
      parts.push(`<line x1="${ox}" x2="${ox}" y1="${top - 3}" y2="${y - GAP + 3}" stroke="#333" stroke-width="1"/>`);
    }
    parts.push(`<line x1="${x0}" x2="${x0}" y1="${top - 3}" y2="${y - GAP + 3}" stroke="#333" stroke-width="1"/>`);
    y += 4;
  }
  y += PAD;
  return `<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${y}" viewBox="0 0 ${W} ${y}" font-family="sans-serif">\n` +
    `<rect width="100%" height="100%" fill="white"/>\n${parts.join('\n')}\n</svg>\n`;
}

/** Writes build/bench/<name>.svg for each name (default: every JSON there); returns the files written. */
export function writeCharts(names?: string[]): string[] {
  const dir = path.join(ROOT, 'build', 'bench');
  if (!fs.existsSync(dir)) return [];
  const all = fs.readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5));
  const written: string[] = [];
  for (const name of names?.length ? names.filter((n) => all.includes(n)) : all) {
    const json = JSON.parse(fs.readFileSync(path.join(dir, `${name}.json`), 'utf8')) as Json;
    const ps = panels(name, json);
    if (!ps.length) continue;
    const m = isObj(json) && isObj(json.machine) ? json.machine : undefined;
    const heading = `${name}${m ? ` — ${m.cpu ?? ''}, ${m.cores ?? '?'} cores, node ${m.node ?? ''}` : ''}`;
    const file = path.join(dir, `${name}.svg`);
    fs.writeFileSync(file, svg(heading, ps));
    written.push(file);
  }
  return written;
}

if (require.main === module) {
  for (const f of writeCharts(process.argv.slice(2))) console.log(`wrote ${f}`);
}
