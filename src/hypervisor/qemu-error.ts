/**
 * The one error type of the QEMU hypervisor (its own module so the
 * command-line builder and the hypervisor can both throw it without an
 * import cycle).
 */
import { KataError } from '../common/errors';

export class QemuError extends KataError<'spawn' | 'exited' | 'qmp' | 'config'> {}
