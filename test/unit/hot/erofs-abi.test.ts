/**
 * The ABI between build/wasm/erofs.wasm and src/hot (src/hot/erofs-abi.ts):
 * every number the host uses is read from the module's exported globals
 * (written once in assembly/erofs/abi.ts), and a module that lacks one, or
 * whose map-walk state outgrew the record, is refused at load with one
 * clear error instead of being misread.
 */
import { expect } from 'chai';
import { ErofsAbiTable, type ErofsExports } from '../../../src/hot/erofs-abi';
import { HotLoaderError, instantiate } from '../../../src/hot/loader';
import { HotMemory } from '../../../src/hot/memory';

describe('hot/erofs ABI: numbers come from the module', function () {
  let exportsOf: Record<string, unknown>;

  before(function () {
    exportsOf = instantiate<Record<string, unknown>>('erofs', new HotMemory({ scratchBytes: 4096 }));
  });

  it('reads every constant from the module; codes are distinct and negative, slots fit the record', function () {
    const t = new ErofsAbiTable(exportsOf);
    const k = t.k as unknown as Record<string, number>;
    const codes = Object.entries(k).filter(([n]) => n.startsWith('E_')).map(([, v]) => v);
    expect(codes.length).to.be.greaterThan(10);
    expect(new Set(codes).size).to.equal(codes.length);
    for (const c of codes) expect(c).to.be.below(0);
    const slots = Object.entries(k).filter(([n]) => /^[SIMDX]_/.test(n)).map(([, v]) => v);
    for (const s of slots) expect(s * 8 + 8).to.be.at.most(512);
    // Slots written by different calls never share a number within a group.
    for (const g of ['S_', 'I_', 'M_', 'D_', 'X_']) {
      const vs = Object.entries(k).filter(([n]) => n.startsWith(g)).map(([, v]) => v);
      expect(new Set(vs).size, g).to.equal(vs.length);
    }
    expect((exportsOf as unknown as ErofsExports).recBytesUsed()).to.be.at.most(k.REC_BYTES);
    expect(t.error(k.E_BAD_DEVICE, 'x').kind).to.equal('bad-device');
    expect(t.error(k.E_OUTSIDE_DEVICE, 'x').kind).to.equal('outside-device');
    expect(t.error(-999, 'x').message).to.match(/error -999/);
  });

  it('refuses a module without one of the constants, naming it', function () {
    const partial = { ...exportsOf };
    delete partial.M_DEVICE;
    expect(() => new ErofsAbiTable(partial, 'old-erofs.wasm')).to.throw(HotLoaderError, /old-erofs\.wasm does not export the ABI constant M_DEVICE/);
  });

  it('refuses a module whose map state outgrew the record', function () {
    const grown = { ...exportsOf, recBytesUsed: () => 4096 };
    expect(() => new ErofsAbiTable(grown)).to.throw(HotLoaderError, /map state needs 4096 bytes/);
  });
});
