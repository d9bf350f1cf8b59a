/**
 * A VM template clone's identity (ReseedRandomDev, SetGuestDateTime — Kata's
 * RPCs): every clone resumes with its template's RNG state and its clock
 * stopped at the template's save time, so the host sends fresh randomness
 * and the time right after the clone answers (src/factory/sandbox-clone.ts).
 *
 * RNG: RNDADDENTROPY through the addon credits the bytes to the kernel's
 * CRNG, as Kata's agent does; without it (an addon from before) the bytes
 * are only written to /dev/urandom, which mixes them in without credit —
 * said in the log. The kernel's vmgenid driver has already reseeded on
 * resume when the VM has QEMU's vmgenid device (src/factory/qemu-template).
 *
 * Clock: clock_settime(CLOCK_REALTIME) through the addon; without it,
 * busybox `date -s @SEC` (second precision), also said in the log.
 */
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { KataError } from '../common/errors';
import { native } from '../common/native';

export class IdentityError extends KataError<'invalid' | 'failed'> {}

/** Most bytes one reseed takes (the kernel's RNDADDENTROPY takes any size; this bounds a hostile request). */
export const MAX_RESEED_BYTES = 4096;

function warn(msg: string): void {
  process.stderr.write(`${JSON.stringify({ level: 'warn', source: 'agent', message: msg })}\n`);
}

export async function reseedRandomDev(data: Buffer): Promise<void> {
  if (!data || data.length === 0) throw new IdentityError('invalid', 'ReseedRandomDev: no data');
  if (data.length > MAX_RESEED_BYTES) throw new IdentityError('invalid', `ReseedRandomDev: ${data.length} bytes, at most ${MAX_RESEED_BYTES}`);
  const n = native();
  if (n.addEntropy) {
    try {
      n.addEntropy(data);
      return;
    } catch (err) {
      throw new IdentityError('failed', `ReseedRandomDev: ${(err as Error).message}`, { cause: err });
    }
  }
  warn('ReseedRandomDev: the native addon has no addEntropy; writing to /dev/urandom (mixed in, not credited)');
  await fs.promises.writeFile('/dev/urandom', data);
}

/** Seconds and microseconds since the Epoch, as Kata's SetGuestDateTimeRequest. */
export function setGuestDateTime(sec: number, usec: number): void {
  if (!Number.isSafeInteger(sec) || sec < 0) throw new IdentityError('invalid', `SetGuestDateTime: bad Sec ${sec}`);
  if (!Number.isSafeInteger(usec) || usec < 0 || usec >= 1_000_000) throw new IdentityError('invalid', `SetGuestDateTime: Usec ${usec} is not in 0..999999`);
  const n = native();
  try {
    if (n.clockSetRealtime) {
      n.clockSetRealtime(sec, usec * 1000);
      return;
    }
    warn('SetGuestDateTime: the native addon has no clockSetRealtime; using date -s (second precision)');
    execFileSync('/bin/date', ['-s', `@${sec}`], { stdio: 'ignore' });
  } catch (err) {
    throw new IdentityError('failed', `SetGuestDateTime: ${(err as Error).message}`, { cause: err });
  }
}
