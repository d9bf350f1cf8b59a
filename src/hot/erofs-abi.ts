/**
 * The ABI of build/wasm/erofs.wasm as the host sees it: the exported
 * functions, and every number (return codes, record slots, map flags,
 * record sizes) read from the module's exported globals at load. The
 * numbers are written once, in assembly/erofs/abi.ts; this file names them
 * and refuses a module that lacks one (a build/wasm older than the source),
 * so the two sides cannot drift apart. Also the error class of the EROFS
 * reader and the mapping of module codes to its kinds and messages.
 */
import { KataError } from '../common/errors';
import { HotLoaderError } from './loader';

export type ErofsErrorKind =
  | 'io' | 'bad-magic' | 'bad-blocksize' | 'unsupported-feature' | 'bad-checksum' | 'unsupported'
  | 'corrupt' | 'not-found' | 'not-dir' | 'not-symlink' | 'is-dir' | 'too-large' | 'loop' | 'no-xattr'
  | 'bad-device' | 'outside-device' | 'no-device' | 'bad-argument';
export class ErofsError extends KataError<ErofsErrorKind> {}

/** Raw function exports of build/wasm/erofs.wasm (each documented in assembly/erofs/<file>.ts). */
export interface ErofsExports {
  setFeatures(rec: number, incompat: number): void;
  recBytesUsed(): number;
  superblock(buf: number, len: number, rec: number): number;
  deviceSlot(p: number, rec: number): number;
  inode(win: number, winLen: number, blkbits: number, ilocOff: number, rec: number): number;
  mapBlocks(win: number, winLen: number, blkbits: number, ilocOff: number, la: number, rec: number): number;
  mapDevice(devt: number, devices: number, blkbits: number, rec: number): number;
  decompressCluster(src: number, srcLen: number, dst: number, dstLen: number, alg: number, zeroPadding: number, partial: number): number;
  dirBlock(blk: number, len: number, out: number, outCap: number): number;
  dirLookup(blk: number, len: number, name: number, nameLen: number): number;
  xattrIbody(win: number, winLen: number, out: number, outCap: number, rec: number): number;
  xattrEntry(p: number, len: number, rec: number): number;
}

/** Names of the constants the host uses; values come from the module. */
const ABI_NAMES = [
  'E_NEED_MORE', 'E_BAD_MAGIC', 'E_BAD_BLKSZ', 'E_UNSUPPORTED_FEATURE', 'E_BAD_CHECKSUM', 'E_UNSUPPORTED', 'E_CORRUPT',
  'E_BAD_MODE', 'E_BAD_DIRENT', 'E_BAD_XATTR', 'E_BAD_INDEX', 'E_DECOMPRESS', 'E_RANGE', 'E_BAD_DEVICE', 'E_OUTSIDE_DEVICE',
  'LOOKUP_BEFORE', 'LOOKUP_AFTER', 'LOOKUP_ABSENT',
  'REC_BYTES',
  'S_BLKBITS', 'S_ROOT_NID', 'S_INOS', 'S_BUILD_TIME', 'S_BUILD_TIME_NSEC', 'S_BLOCKS', 'S_META_BLKADDR', 'S_XATTR_BLKADDR',
  'S_FEATURE_COMPAT', 'S_FEATURE_INCOMPAT', 'S_COMPR_ALGS', 'S_EXTRA_DEVICES', 'S_CHECKSUM', 'S_UNKNOWN_INCOMPAT',
  'S_DEVICES', 'S_DEVT_OFF',
  'I_VERSION', 'I_LAYOUT', 'I_XATTR_ISIZE', 'I_MODE', 'I_NLINK', 'I_SIZE', 'I_UID', 'I_GID', 'I_MTIME', 'I_MTIME_NSEC',
  'I_META_NEED', 'I_RDEV_MAJOR', 'I_RDEV_MINOR', 'I_CHUNKBITS', 'I_CHUNK_UNIT',
  'M_LA', 'M_LLEN', 'M_PA', 'M_PLEN', 'M_FLAGS', 'M_ALG', 'M_DEVICE',
  'D_BLOCKS', 'D_MAPPED_BLKADDR', 'D_TAG_LEN',
  'X_SHARED_COUNT', 'X_INDEX', 'X_NAME_LEN', 'X_VALUE_SIZE', 'X_ENTRY_SIZE',
  'MAP_MAPPED', 'MAP_META', 'MAP_ENCODED',
  'DIRENT_SIZE', 'XATTR_SIZE', 'DEVT_SLOT_SIZE', 'INCOMPAT_LZ4_0PADDING',
] as const;
export type ErofsAbiName = typeof ABI_NAMES[number];
export type ErofsAbi = { readonly [K in ErofsAbiName]: number };

/** What each return code means to a user (kind, message). */
const CODE_INFO: Partial<Record<ErofsAbiName, [ErofsErrorKind, string]>> = {
  E_NEED_MORE: ['corrupt', 'metadata truncated'],
  E_BAD_MAGIC: ['bad-magic', 'bad superblock magic (not EROFS)'],
  E_BAD_BLKSZ: ['bad-blocksize', 'unsupported block size'],
  E_UNSUPPORTED_FEATURE: ['unsupported-feature', 'unknown incompatible feature'],
  E_BAD_CHECKSUM: ['bad-checksum', 'superblock checksum mismatch'],
  E_UNSUPPORTED: ['unsupported', 'unsupported on-disk format'],
  E_CORRUPT: ['corrupt', 'corrupted metadata'],
  E_BAD_MODE: ['corrupt', 'invalid inode mode'],
  E_BAD_DIRENT: ['corrupt', 'corrupted directory entry'],
  E_BAD_XATTR: ['corrupt', 'corrupted xattr'],
  E_BAD_INDEX: ['corrupt', 'corrupted compression index'],
  E_DECOMPRESS: ['corrupt', 'corrupted compressed data'],
  E_RANGE: ['corrupt', 'out of range'],
  E_BAD_DEVICE: ['bad-device', 'chunk index names a device the device table does not have'],
  E_OUTSIDE_DEVICE: ['outside-device', 'chunk lies outside its device'],
};

/** The module's constants plus a code → error mapping. */
export class ErofsAbiTable {
  readonly k: ErofsAbi;
  private readonly byCode = new Map<number, [ErofsErrorKind, string]>();

  constructor(instanceExports: Record<string, unknown>, file = 'erofs.wasm') {
    const k: Record<string, number> = {};
    for (const name of ABI_NAMES) {
      const g = instanceExports[name];
      if (!(g instanceof WebAssembly.Global) || typeof g.value !== 'number') {
        throw new HotLoaderError('invalid', `${file} does not export the ABI constant ${name}; rebuild it with scripts/build-wasm.sh`);
      }
      k[name] = g.value as number;
    }
    this.k = k as ErofsAbi;
    for (const [name, info] of Object.entries(CODE_INFO)) this.byCode.set(k[name], info);
    const used = (instanceExports as unknown as ErofsExports).recBytesUsed();
    if (used > this.k.REC_BYTES) throw new HotLoaderError('invalid', `${file}: map state needs ${used} bytes of a ${this.k.REC_BYTES}-byte record`);
  }

  /** The ErofsError for a module return code, with context. */
  error(code: number, what: string): ErofsError {
    const info = this.byCode.get(code);
    return new ErofsError(info?.[0] ?? 'corrupt', `erofs: ${what}: ${info?.[1] ?? `error ${code}`}`);
  }
}

const tables = new WeakMap<object, ErofsAbiTable>();
/** One table per compiled module (instances of one module share it). */
export function abiOf(module: WebAssembly.Module, instanceExports: Record<string, unknown>): ErofsAbiTable {
  let t = tables.get(module);
  if (!t) {
    t = new ErofsAbiTable(instanceExports);
    tables.set(module, t);
  }
  return t;
}
