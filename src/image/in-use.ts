/**
 * Use records: which running sandboxes read a converted image, so that
 * `kata-ctl image rm` refuses it and `gc` keeps its metadata and blobs
 * (containerd calls the same idea a lease).
 *
 *   <root>/in-use/<image hex>/<owner>   JSON {sandbox, container, pid, startTime, since}
 *
 * A record is created (temp file + rename, so never seen half-written) when
 * an image's disks are opened for a container, and removed when its blob
 * device closes (container removed, sandbox stopped). A process that dies
 * cannot remove its records: a record is live only while its pid exists and
 * still has the start time (/proc/<pid>/stat field 22) written in it, so a
 * recycled pid does not keep an image pinned. Stale records are ignored by
 * every reader and deleted by `gc` (cleanStaleUses).
 *
 * Race with `rm` (no shared lock, so a container start never waits for a
 * conversion): the user writes its record, then checks the image is listed;
 * rm unlists the image, then checks for records (and relists it when it
 * finds one). Each writes before it reads, so at least one sees the other.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { imageIdHex } from './store';

export interface UseRecord {
  sandbox: string;
  container: string;
  pid: number;
  /** Process start time in clock ticks since boot, or 0 if /proc cannot say. */
  startTime: number;
  since: string;
}

export function inUseDir(root: string): string { return path.join(root, 'in-use'); }
function imageUseDir(root: string, hex: string): string { return path.join(inUseDir(root), hex); }

/** Field 22 of /proc/<pid>/stat (starttime); 0 when unreadable. */
export function processStartTime(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may contain spaces and parens: fields after the last ')' start at field 3.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(rest[22 - 3]) || 0;
  } catch { return 0; }
}

/** True while the record's process exists and is the same process (start time). */
export function useIsLive(r: UseRecord): boolean {
  if (!Number.isInteger(r.pid) || r.pid <= 0) return false;
  try { process.kill(r.pid, 0); } catch (e) { if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false; }
  if (!r.startTime) return true;
  const now = processStartTime(r.pid);
  return now === 0 || now === r.startTime;
}

function ownerName(sandbox: string, container: string): string {
  return encodeURIComponent(`${sandbox}.${container}`);
}

export interface ImageUse { path: string; release(): void }

/**
 * Writes this process's use record for an image (atomically) and returns its
 * release. The caller must check afterwards that the image is still listed
 * (see the header) and release if not.
 */
export function acquireImageUse(root: string, imageId: string, sandbox: string, container: string): ImageUse {
  const hex = imageIdHex(imageId);
  const dir = imageUseDir(root, hex);
  const rec: UseRecord = { sandbox, container, pid: process.pid, startTime: processStartTime(process.pid), since: new Date().toISOString() };
  const final = path.join(dir, ownerName(sandbox, container));
  for (let attempt = 0; ; attempt++) {
    fs.mkdirSync(dir, { recursive: true });
    const tmp = path.join(dir, `.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`);
    try {
      fs.writeFileSync(tmp, JSON.stringify(rec));
      fs.renameSync(tmp, final);
      break;
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      // A releaser removed the (empty) directory between our mkdir and write: retry.
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 20) throw e;
    }
  }
  let released = false;
  return {
    path: final,
    release: () => {
      if (released) return;
      released = true;
      fs.rmSync(final, { force: true });
      try { fs.rmdirSync(dir); } catch { /* other users, or already gone */ }
    },
  };
}

function readRecord(p: string): UseRecord | undefined {
  try {
    const r = JSON.parse(fs.readFileSync(p, 'utf8')) as UseRecord;
    return typeof r.pid === 'number' ? r : undefined;
  } catch { return undefined; }
}

/** Every image with at least one record: hex → { live, stale paths }. */
function scan(root: string): Map<string, { live: UseRecord[]; stale: string[] }> {
  const out = new Map<string, { live: UseRecord[]; stale: string[] }>();
  let hexes: string[] = [];
  try { hexes = fs.readdirSync(inUseDir(root)); } catch { return out; }
  for (const hex of hexes) {
    if (!/^[0-9a-f]{64}$/.test(hex)) continue;
    const e = { live: [] as UseRecord[], stale: [] as string[] };
    let names: string[] = [];
    try { names = fs.readdirSync(imageUseDir(root, hex)); } catch { continue; }
    for (const n of names) {
      if (n.startsWith('.tmp-')) continue; // being written; its rename is what counts
      const p = path.join(imageUseDir(root, hex), n);
      const r = readRecord(p);
      if (r && useIsLive(r)) e.live.push(r);
      else e.stale.push(p);
    }
    out.set(hex, e);
  }
  return out;
}

/** Live records of one image. */
export function imageUsers(root: string, imageId: string): UseRecord[] {
  return scan(root).get(imageIdHex(imageId))?.live ?? [];
}

/** Hex ids of every image a live record names. */
export function imagesInUse(root: string): Map<string, UseRecord[]> {
  const m = new Map<string, UseRecord[]>();
  for (const [hex, e] of scan(root)) if (e.live.length) m.set(hex, e.live);
  return m;
}

/** Deletes stale records (dead or recycled pid, unreadable) and empty dirs. Returns how many records went. */
export function cleanStaleUses(root: string): number {
  let n = 0;
  for (const [hex, e] of scan(root)) {
    for (const p of e.stale) { fs.rmSync(p, { force: true }); n++; }
    if (!e.live.length) try { fs.rmdirSync(imageUseDir(root, hex)); } catch { /* a record appeared meanwhile */ }
  }
  return n;
}

/** "sandbox s1 (container c1, pid 42)" for errors. */
export function describeUsers(users: UseRecord[]): string {
  return users.map((u) => `sandbox ${u.sandbox} (container ${u.container}, pid ${u.pid})`).join(', ');
}
