/**
 * The slice of the WebAssembly JS API src/hot uses. TypeScript ships these
 * types only in lib.dom / lib.webworker, which a Node project should not pull
 * in (tsconfig lib is ES2022), and @types/node 20 does not declare them.
 * If tsconfig ever adds "DOM", delete this file.
 */
declare namespace WebAssembly {
  interface MemoryDescriptor { initial: number; maximum?: number; shared?: boolean }
  class Memory {
    constructor(descriptor: MemoryDescriptor);
    readonly buffer: ArrayBuffer;
    grow(delta: number): number;
  }
  type ImportValue = Function | Memory | number;
  type Imports = Record<string, Record<string, ImportValue>>;
  type Exports = Record<string, Function | Memory | unknown>;
  /** Exported globals: assembly/erofs exports its ABI constants this way. */
  class Global {
    readonly value: number | bigint;
  }
  class Module {
    constructor(bytes: ArrayBufferView | ArrayBuffer);
  }
  class Instance {
    constructor(module: Module, imports?: Imports);
    readonly exports: Exports;
  }
  class CompileError extends Error {}
  class LinkError extends Error {}
  class RuntimeError extends Error {}
}
