/**
 * containerd's runtime options for the shim (src/shim/runtime-options.ts):
 * the bytes containerd 1.6.20 wrote to `start`'s stdin on this host for
 * `ctr run --runtime-config-path /etc/foo.toml`, other option types, and
 * hostile input (malformed protobuf, relative or missing paths).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configPathFromAny, configPathFromStartInput, readStartInput, RuntimeOptionsError, RUNTIME_OPTIONS_TYPE } from '../../../src/shim/runtime-options';

/** A protobuf length-delimited field (short values only: one-byte lengths). */
const field = (no: number, value: Buffer): Buffer => Buffer.concat([Buffer.from([(no << 3) | 2, value.length]), value]);
const optionsAny = (configPath: string, typeUrl = RUNTIME_OPTIONS_TYPE): Buffer =>
  Buffer.concat([field(1, Buffer.from(typeUrl)), field(2, field(2, Buffer.from(configPath)))]);

describe('shim: containerd runtime options (ConfigPath)', () => {
  let dir: string;
  let conf: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-rtopts-'));
    conf = path.join(dir, 'handler.toml');
    fs.writeFileSync(conf, '[runtime]\n');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('reads the bytes containerd 1.6.20 writes to start\'s stdin (captured on this host)', () => {
    const captured = Buffer.from('0a1972756e74696d656f7074696f6e732e76312e4f7074696f6e73120f120d2f6574632f666f6f2e746f6d6c', 'hex');
    expect(captured.equals(optionsAny('/etc/foo.toml')), 'our fixture encoder agrees with containerd').to.equal(true);
    // /etc/foo.toml does not exist here: the path is decoded, then refused by name.
    expect(() => configPathFromStartInput(captured)).to.throw(RuntimeOptionsError, /ConfigPath "\/etc\/foo.toml": no such file/);
    expect(configPathFromStartInput(optionsAny(conf))).to.equal(conf);
  });

  it('no options, an empty ConfigPath or another runtime\'s options type: no file', () => {
    expect(configPathFromStartInput(Buffer.alloc(0))).to.equal(undefined);
    expect(configPathFromStartInput(optionsAny(''))).to.equal(undefined);
    expect(configPathFromStartInput(optionsAny(conf, 'containerd.runc.v1.Options'))).to.equal(undefined);
    expect(configPathFromAny({ type_url: `type.googleapis.com/${RUNTIME_OPTIONS_TYPE}`, value: field(2, Buffer.from(conf)) })).to.equal(conf);
  });

  it('refuses malformed bytes and paths that are relative, missing or not a file, naming the option', () => {
    const cases: [Buffer, RegExp][] = [
      [Buffer.from([0x0a, 0x40, 0x41]), /not a protobuf Any/],
      [Buffer.concat([field(1, Buffer.from(RUNTIME_OPTIONS_TYPE)), field(2, Buffer.from([0x12, 0x7f, 0x2f]))]), /runtime options \(runtimeoptions.v1.Options\) are malformed/],
      [optionsAny('etc/kata.toml'), /must be an absolute path/],
      [optionsAny(path.join(dir, 'nope.toml')), /no such file/],
      [optionsAny(dir), /not a regular file/],
    ];
    for (const [bytes, msg] of cases) expect(() => configPathFromStartInput(bytes), String(msg)).to.throw(RuntimeOptionsError, msg);
  });

  it('reads stdin only when it is a pipe or a file', () => {
    const f = path.join(dir, 'stdin.bin');
    fs.writeFileSync(f, optionsAny(conf));
    const fd = fs.openSync(f, 'r');
    try {
      expect(configPathFromStartInput(readStartInput(fd))).to.equal(conf);
    } finally {
      fs.closeSync(fd);
    }
    const nul = fs.openSync('/dev/null', 'r');
    try {
      expect(readStartInput(nul).length, '/dev/null is a character device: not read').to.equal(0);
    } finally {
      fs.closeSync(nul);
    }
  });
});
