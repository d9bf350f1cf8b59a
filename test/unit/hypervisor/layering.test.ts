/**
 * Imports point down (ARCHITECTURE.md "Rooms"): nothing under src/hypervisor
 * imports src/runtime, src/shim, src/cli or src/ctl; the hypervisor gets its
 * own settings type (src/hypervisor/settings.ts). And the shim and the
 * `kata-ts` CLI reach a hypervisor only through the runtime
 * (src/runtime/hypervisor-choice.ts, issue 14): no file under src/shim or
 * src/cli imports src/hypervisor — type-only imports included, since the
 * runtime re-exports the Hypervisor type they pass around. Reads the
 * TypeScript sources, so a new import across these lines fails here.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';

const SRC = path.resolve(__dirname, '../../../../src');

/** Every relative import of the .ts files under src/<dir>, as [file, specifier, top-level folder it reaches]. */
function importsUnder(dir: string): Array<[string, string, string]> {
  const root = path.join(SRC, dir);
  expect(fs.existsSync(root), root).to.equal(true);
  const files = fs.readdirSync(root, { recursive: true }).map(String).filter((f) => f.endsWith('.ts'));
  expect(files.length).to.be.greaterThan(3);
  const out: Array<[string, string, string]> = [];
  for (const f of files) {
    for (const spec of importsOf(path.join(root, f))) {
      if (!spec.startsWith('.')) continue;
      out.push([`${dir}/${f}`, spec, path.relative(SRC, path.resolve(path.dirname(path.join(root, f)), spec)).split(path.sep)[0]]);
    }
  }
  return out;
}

function importsOf(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  return [...text.matchAll(/(?:import|export)[^;]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|require\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => m[1] ?? m[2] ?? m[3]);
}

describe('unit: src/hypervisor imports point down', () => {
  it('no file in src/hypervisor imports the runtime, shim, CLI or kata-ctl', () => {
    const dir = path.join(SRC, 'hypervisor');
    expect(fs.existsSync(dir), dir).to.equal(true);
    const bad: string[] = [];
    const files = fs.readdirSync(dir, { recursive: true }).map(String).filter((f) => f.endsWith('.ts'));
    expect(files.length).to.be.greaterThan(3);
    for (const f of files) {
      for (const spec of importsOf(path.join(dir, f))) {
        if (!spec.startsWith('.')) continue;
        const target = path.relative(SRC, path.resolve(path.dirname(path.join(dir, f)), spec)).split(path.sep)[0];
        if (['runtime', 'shim', 'cli', 'ctl'].includes(target)) bad.push(`${f} imports ${spec}`);
      }
    }
    expect(bad).to.deep.equal([]);
  });

  it('no file in src/shim or src/cli imports src/hypervisor (values or types): they go through src/runtime', () => {
    const bad = [...importsUnder('shim'), ...importsUnder('cli')].filter(([, , target]) => target === 'hypervisor').map(([f, spec]) => `${f} imports ${spec}`);
    expect(bad).to.deep.equal([]);
  });

  it('the check sees an import of src/hypervisor where there is one (src/runtime has them)', () => {
    // Guards the scanner itself: if it found nothing anywhere, the test above could not fail.
    expect(importsUnder('runtime').some(([f, , target]) => f === 'runtime/hypervisor-choice.ts' && target === 'hypervisor')).to.equal(true);
  });
});
