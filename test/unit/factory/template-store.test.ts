import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { templateStatus, writeManifest, type TemplateManifest } from '../../../src/factory/template-store';
import { templateKey, TEMPLATE_FORMAT, type TemplateInputs } from '../../../src/factory/template-key';

const QEVM = Buffer.from([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]);

function inputs(cmdline = 'quiet'): TemplateInputs {
  const f = (p: string) => ({ path: p, ino: 1, size: 2, mtimeMs: 3 });
  return { format: TEMPLATE_FORMAT, kernel: f('/k'), image: f('/i'), qemu: f('/q'), kernelCmdline: cmdline, vcpus: 1, memoryMiB: 1, machine: 'pc', machineAccelerators: '', accel: 'tcg', memory: { m: '1M', smp: '1', daxImage: null, balloon: false, virtioMemMiB: 0 } };
}

/** A template directory as factory init leaves it, with a 1 MiB sparse memory file. */
function makeTemplate(dir: string, inp = inputs()): TemplateManifest {
  fs.mkdirSync(dir, { recursive: true });
  const state = Buffer.concat([QEVM, Buffer.alloc(5000, 1)]);
  fs.writeFileSync(path.join(dir, 'state'), state);
  fs.writeFileSync(path.join(dir, 'memory'), '');
  fs.truncateSync(path.join(dir, 'memory'), 1 << 20);
  const m: TemplateManifest = {
    schemaVersion: 1, key: templateKey(inp), inputs: inp, createdAt: new Date(Date.now() - 5000).toISOString(), qemuVersion: 'QEMU 7.2',
    kernelSha256: 'a'.repeat(64), imageSha256: 'b'.repeat(64), stateBytes: state.length, memoryBytes: 1 << 20, memoryDataBytes: 0,
    mountedTmpfs: false, bootS: 5, saveS: 0.02,
  };
  writeManifest(dir, m);
  return m;
}

describe('unit: factory template store (status)', () => {
  let tmp: string;
  beforeEach(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-tpl-unit-')); });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('a complete template for the same inputs is valid, with its age and size', () => {
    makeTemplate(tmp);
    const st = templateStatus(tmp, inputs());
    expect(st.state).to.equal('valid');
    expect(st.reasons).to.deep.equal([]);
    expect(st.ageS).to.be.within(4, 60);
    expect(st.diskBytes).to.be.greaterThan(5000);
    expect(fs.readdirSync(tmp).sort()).to.deep.equal(['manifest.json', 'memory', 'state']);
  });

  it('no directory or no manifest is missing', () => {
    expect(templateStatus(path.join(tmp, 'nope'), inputs()).state).to.equal('missing');
    fs.writeFileSync(path.join(tmp, 'state'), 'x');
    const st = templateStatus(tmp, inputs());
    expect(st.state).to.equal('missing');
    expect(st.reasons[0]).to.match(/factory init/);
  });

  it('other inputs make it stale, saying what changed', () => {
    makeTemplate(tmp);
    const st = templateStatus(tmp, inputs('quiet other=1'));
    expect(st.state).to.equal('stale');
    expect(st.reasons.join('\n')).to.match(/kernel command line differs/);
  });

  it('an unreadable manifest, a truncated or foreign state file, a resized memory file are corrupt', () => {
    const cases: [string, (dir: string) => void, RegExp][] = [
      ['manifest not JSON', (d) => fs.writeFileSync(path.join(d, 'manifest.json'), '{"schemaVersion":1,'), /manifest\.json: /],
      ['manifest of something else', (d) => fs.writeFileSync(path.join(d, 'manifest.json'), '{"hello":1}'), /not a kata-ts template manifest/],
      ['state truncated', (d) => fs.truncateSync(path.join(d, 'state'), 100), /truncated or replaced/],
      ['state removed', (d) => fs.rmSync(path.join(d, 'state')), /state is missing/],
      ['state not QEMU\'s', (d) => { const f = path.join(d, 'state'); const b = fs.readFileSync(f); b.write('XXXX', 0); fs.writeFileSync(f, b); }, /migration header/],
      ['memory resized', (d) => fs.truncateSync(path.join(d, 'memory'), 4096), /memory holds 4096 bytes/],
    ];
    for (const [what, damage, reason] of cases) {
      const dir = path.join(tmp, what.replace(/\W+/g, '-'));
      makeTemplate(dir);
      damage(dir);
      const st = templateStatus(dir, inputs());
      expect(st.state, what).to.equal('corrupt');
      expect(st.reasons.join('\n'), what).to.match(reason);
    }
  });
});
