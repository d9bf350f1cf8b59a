/**
 * The one way a test skips: `skipOrFail(this, reason)`.
 *
 * A missing prerequisite that set-up installs or builds (guest kernel or
 * image, QEMU, containerd, a CNI plugin, xxhsum, tmux, gcc, the native
 * addon, …) skips with its reason on a developer's machine, but under
 * `CI=true` it throws an error naming the prerequisite: a CI run with a
 * broken set-up must fail, not stay green by skipping.
 *
 * Only what this host cannot have — KVM, or KVM that runs guests in
 * hardware (here it only emulates them), an IOMMU or VFIO device, a PVM
 * host, /dev/net/tun, network namespaces — may skip under CI, with
 * `{ hostCannot: true }`. Root is a prerequisite: CI runs set-up as root. The reason is printed either
 * way, and such a skip is marked on the test (or, from a hook, on its suite)
 * as `kataTsHostCannot`, so test/run.js can count any other skip under CI
 * (a bare `this.skip()`, `it.skip`) as a failure.
 */
export const HOST_CANNOT_MARK = 'kataTsHostCannot';

/** True when the environment says this is a CI run (CI=true, as CI services set it). */
export function inCi(): boolean {
  return /^(true|1|yes)$/i.test(process.env.CI ?? '');
}

/** Thrown under CI when a prerequisite is missing. */
export class MissingPrerequisiteError extends Error {
  constructor(readonly reason: string) {
    super(`missing prerequisite (CI=true, so this fails instead of skipping): ${reason}`);
    this.name = 'MissingPrerequisiteError';
  }
}

export function skipOrFail(ctx: Mocha.Context, reason: string, opts: { hostCannot?: boolean } = {}): never {
  if (!opts.hostCannot && inCi()) throw new MissingPrerequisiteError(reason);
  if (opts.hostCannot) {
    const r = ctx.runnable();
    // From a hook the skip covers the suite's tests; from a test, that test.
    const isHook = (r as unknown as { type?: string }).type === 'hook';
    const target = (isHook ? r.parent : r) as unknown as Record<string, unknown> | undefined;
    if (target) target[HOST_CANNOT_MARK] = reason;
  }
  process.stdout.write(`      skipped${opts.hostCannot ? ' (this host cannot)' : ''}: ${reason}\n`);
  ctx.skip();
}
