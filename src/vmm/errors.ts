/**
 * The builtin VMM's one error class. `kind` says which part failed:
 * kvm (a KVM ioctl or capability), guest (the guest stopped abnormally:
 * triple fault, emulation failure, entry failure), boot (kernel image or
 * layout), config (bad machine options), device (a device model), vfio.
 */
import { KataError } from '../common/errors';

export type VmmErrorKind = 'kvm' | 'guest' | 'boot' | 'config' | 'device' | 'vfio' | 'refused';
export class VmmError extends KataError<VmmErrorKind> {}
