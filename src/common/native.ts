/**
 * The one typed facade over the N-API addon (native/, built by set-up as
 * native/build/Release/kata_native.node). Loaded lazily so code paths that
 * never need a syscall Node lacks also run where the addon is not built;
 * tests substitute it with setNativeForTests().
 */
import * as path from 'node:path';
import { KataError } from './errors';

export interface NativeAddon {
  /** Bound+listening AF_UNIX stream socket; returns the fd (close-on-exec). */
  unixListen(path: string): number;
  /** Accept one connection on a listener and receive one fd (SCM_RIGHTS). */
  recvFd(listenFd: number): Promise<number>;
  setWinsize(fd: number, rows: number, cols: number): void;
  getWinsize(fd: number): { rows: number; cols: number };
  closeFd(fd: number): void;
}

export class NativeError extends KataError<'not-built'> {}

let addon: NativeAddon | undefined;

export function native(): NativeAddon {
  if (addon) return addon;
  const file = path.resolve(__dirname, '..', '..', '..', 'native', 'build', 'Release', 'kata_native.node');
  try {
    addon = require(file) as NativeAddon;
  } catch (err) {
    throw new NativeError('not-built', `native addon not available at ${file} (run scripts/setup.sh)`, { cause: err });
  }
  return addon;
}

export function setNativeForTests(a: NativeAddon | undefined): void {
  addon = a;
}
