/**
 * Imports point down (ARCHITECTURE.md "Rooms"): nothing under src/hypervisor
 * imports src/runtime, src/shim, src/cli or src/ctl; the hypervisor gets its
 * own settings type (src/hypervisor/settings.ts). Reads the TypeScript
 * sources, so a new upward import fails here.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';

const SRC = path.resolve(__dirname, '../../../../src');

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
});
