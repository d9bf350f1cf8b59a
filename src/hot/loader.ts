/**
 * Instantiates the AssemblyScript modules (build/wasm/<name>.wasm) over one
 * shared HotMemory. The only door into assembly/ (ARCHITECTURE.md, rooms).
 *
 * Every module imports `env.memory` (asconfig.json importMemory). Because they
 * all share one Memory, a module's static data must stay inside
 * [0, STATIC_END) and must not overlap another module's: the loader reads the
 * data section and refuses a module that breaks either rule, instead of
 * letting two modules silently overwrite each other's constants. Modules that
 * keep no static data (virtio, hash) pass trivially.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../common/errors';
import { HotMemory, STATIC_END } from './memory';

export type HotLoaderErrorKind = 'missing' | 'invalid' | 'layout' | 'abort';
export class HotLoaderError extends KataError<HotLoaderErrorKind> {}

/** Where build/wasm lives: $KATA_TS_WASM_DIR, else <repo>/build/wasm. */
export function wasmDir(): string {
  if (process.env.KATA_TS_WASM_DIR) return process.env.KATA_TS_WASM_DIR;
  // dist/src/hot/loader.js → repo root is three levels up; src/hot → two.
  for (const up of ['../../..', '../..']) {
    const dir = path.resolve(__dirname, up, 'build', 'wasm');
    if (fs.existsSync(dir)) return dir;
  }
  return path.resolve(__dirname, '../../..', 'build', 'wasm');
}

const compiled = new Map<string, WebAssembly.Module>();

/** Compiles (once per process) build/wasm/<name>.wasm. */
export function compileModule(name: string): WebAssembly.Module {
  const hit = compiled.get(name);
  if (hit) return hit;
  const file = path.join(wasmDir(), `${name}.wasm`);
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (cause) {
    throw new HotLoaderError('missing', `${file} not found; run scripts/build-wasm.sh`, { cause });
  }
  let mod: WebAssembly.Module;
  try {
    mod = new WebAssembly.Module(bytes);
  } catch (cause) {
    throw new HotLoaderError('invalid', `${file} is not a valid WebAssembly module`, { cause });
  }
  const segs = activeDataSegments(bytes);
  for (const s of segs) {
    if (s.offset + s.size > STATIC_END) {
      throw new HotLoaderError('layout', `${name}.wasm: data segment ${s.offset}+${s.size} passes STATIC_END ${STATIC_END}`);
    }
  }
  staticRanges.set(name, segs);
  compiled.set(name, mod);
  return mod;
}

interface Segment { offset: number; size: number }
const staticRanges = new Map<string, Segment[]>();
/** Per Memory: which modules were instantiated over it (static data check). */
const owners = new WeakMap<WebAssembly.Memory, Set<string>>();

/** Instantiates module `name` over `mem`; exports typed by the caller. */
export function instantiate<T extends object>(name: string, mem: HotMemory): T {
  const mod = compileModule(name);
  const mine = staticRanges.get(name) ?? [];
  const set = owners.get(mem.memory) ?? new Set<string>();
  for (const other of set) {
    if (other === name) continue;
    for (const a of mine) for (const b of staticRanges.get(other) ?? []) {
      if (a.offset < b.offset + b.size && b.offset < a.offset + a.size) {
        throw new HotLoaderError('layout', `${name}.wasm and ${other}.wasm static data overlap at ${Math.max(a.offset, b.offset)}; build one with a distinct --memoryBase`);
      }
    }
  }
  set.add(name);
  owners.set(mem.memory, set);
  const inst = new WebAssembly.Instance(mod, {
    env: {
      memory: mem.memory,
      // AssemblyScript's abort(msg, file, line, col). Modules are built with
      // noAssert and avoid throwing paths; reaching this is a bug in assembly/.
      abort: (_msg: number, _file: number, line: number, col: number) => {
        throw new HotLoaderError('abort', `${name}.wasm aborted at line ${line}:${col}`);
      },
    },
  });
  return inst.exports as unknown as T;
}

/** Offsets and sizes of active data segments (memory 0, i32.const offset). */
export function activeDataSegments(bytes: Uint8Array): Segment[] {
  let p = 8;
  const leb = (): number => {
    let result = 0, shift = 0, b: number;
    do {
      if (p >= bytes.length) throw new HotLoaderError('invalid', 'truncated LEB128 in wasm');
      b = bytes[p++];
      result += (b & 0x7f) * 2 ** shift;
      shift += 7;
    } while (b & 0x80);
    return result;
  };
  const out: Segment[] = [];
  while (p < bytes.length) {
    const id = bytes[p++];
    const size = leb();
    const end = p + size;
    if (id === 11) {
      const count = leb();
      for (let i = 0; i < count; i++) {
        const kind = leb();
        if (kind === 1) { p += leb(); continue; } // passive: not placed in memory
        if (kind === 2) leb(); // explicit memory index
        if (bytes[p++] !== 0x41) throw new HotLoaderError('invalid', 'data segment offset is not i32.const');
        // signed LEB; AssemblyScript offsets are small non-negative.
        const offset = leb();
        if (bytes[p++] !== 0x0b) throw new HotLoaderError('invalid', 'data segment offset expression not terminated');
        const len = leb();
        out.push({ offset, size: len });
        p += len;
      }
    }
    p = end;
  }
  return out;
}
