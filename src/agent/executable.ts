/**
 * Finds a process's executable inside a container root before crun runs it,
 * so "command not found" is a clear error with the status shells and Docker
 * use (127) instead of a crun failure mixed into the container's stderr.
 * Paths are resolved as the container will see them: symlinks (absolute ones
 * relative to the container root) are followed without leaving the root.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Resolve `p` (absolute, container view) to a host path inside `root`, or undefined. */
export function resolveInRoot(root: string, p: string, maxLinks = 40): string | undefined {
  const parts = p.split('/').filter((x) => x && x !== '.');
  let cur: string[] = [];
  let links = 0;
  while (parts.length) {
    const name = parts.shift()!;
    if (name === '..') {
      cur.pop();
      continue;
    }
    const host = path.join(root, ...cur, name);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(host);
    } catch {
      return undefined;
    }
    if (st.isSymbolicLink()) {
      if (++links > maxLinks) return undefined;
      const target = fs.readlinkSync(host);
      if (target.startsWith('/')) cur = [];
      parts.unshift(...target.split('/').filter((x) => x && x !== '.'));
      continue;
    }
    cur.push(name);
  }
  return path.join(root, ...cur);
}

function isExecutableFile(p: string): boolean {
  try {
    const st = fs.statSync(p);
    return st.isFile() && (st.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

/** True when args0 names an executable file in the container (PATH lookup like execvp). */
export function executableExists(root: string, args0: string, env: string[] = [], cwd = '/'): boolean {
  if (args0.includes('/')) {
    const abs = args0.startsWith('/') ? args0 : path.posix.join(cwd, args0);
    const host = resolveInRoot(root, abs);
    return !!host && isExecutableFile(host);
  }
  const pathVar = env.find((e) => e.startsWith('PATH='))?.slice(5) ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
  for (const dir of pathVar.split(':')) {
    if (!dir) continue;
    const host = resolveInRoot(root, path.posix.join(dir.startsWith('/') ? dir : path.posix.join(cwd, dir), args0));
    if (host && isExecutableFile(host)) return true;
  }
  return false;
}
