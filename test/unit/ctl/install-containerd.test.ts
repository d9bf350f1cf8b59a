/**
 * `kata-ctl install containerd` / `uninstall containerd` on temp files only
 * (never /etc/containerd): the snippet lands where containerd 1.6's config
 * version 2 reads it, install and uninstall are idempotent and inverse to
 * the byte, a backup is made before every change, and configs we must not
 * touch (version 1, a handler the user wrote, broken TOML) are refused with
 * the file left as it was. The real containerd reading an installed config
 * is covered by test/e2e/cri.test.ts, whose containerd config gets its
 * kata-ts handler from the same code.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseToml, type TomlTable } from '../../../src/common/toml';
import { ContainerdConfigError, installContainerdRuntime, runtimeSnippet, uninstallContainerdRuntime } from '../../../src/ctl/containerd-config';
import { kataCtl } from '../../helpers/kata-ctl';

// What Debian's containerd package installs as /etc/containerd/config.toml.
const DEBIAN = `version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
`;

function runtimes(text: string): TomlTable {
  const v = parseToml(text).value as Record<string, any>;
  return v.plugins['io.containerd.grpc.v1.cri'].containerd.runtimes as TomlTable;
}

describe('kata-ctl install/uninstall containerd', function () {
  this.timeout(30000);
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-install-'));
    file = path.join(dir, 'config.toml');
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('adds the kata-ts handler to a version 2 config, keeps every other byte, backs up first; uninstall restores the file exactly', () => {
    fs.writeFileSync(file, DEBIAN, { mode: 0o640 });
    const r = installContainerdRuntime(file);
    expect(r.changed).to.equal(true);
    expect(r.backup).to.equal(`${file}.kata-ts.bak`);
    expect(fs.readFileSync(r.backup!, 'utf8')).to.equal(DEBIAN);
    const text = fs.readFileSync(file, 'utf8');
    expect(text.startsWith(DEBIAN), 'the old content is untouched').to.equal(true);
    expect(text.endsWith(runtimeSnippet())).to.equal(true);
    expect(runtimes(text)['kata-ts']).to.deep.equal({
      runtime_type: 'io.containerd.kata-ts.v2', privileged_without_host_devices: true, pod_annotations: ['io.katacontainers.*'],
    });
    expect((parseToml(text).value.plugins as any)['io.containerd.grpc.v1.cri'].cni.bin_dir).to.equal('/usr/lib/cni');
    expect(fs.statSync(file).mode & 0o777, 'mode kept').to.equal(0o640);
    expect(fs.readdirSync(dir).sort(), 'no temp file left').to.deep.equal(['config.toml', 'config.toml.kata-ts.bak']);

    const u = uninstallContainerdRuntime(file);
    expect(u.changed).to.equal(true);
    expect(fs.readFileSync(file, 'utf8')).to.equal(DEBIAN);
    expect(fs.readFileSync(`${file}.kata-ts.bak`, 'utf8'), 'backup of the installed state').to.equal(text);
  });

  it('is idempotent: a second install or uninstall changes and writes nothing', () => {
    fs.writeFileSync(file, DEBIAN);
    installContainerdRuntime(file);
    const once = fs.readFileSync(file, 'utf8');
    fs.rmSync(`${file}.kata-ts.bak`);
    const again = installContainerdRuntime(file);
    expect(again.changed).to.equal(false);
    expect(fs.readFileSync(file, 'utf8')).to.equal(once);
    expect(fs.existsSync(`${file}.kata-ts.bak`), 'no backup when nothing changes').to.equal(false);
    uninstallContainerdRuntime(file);
    const u2 = uninstallContainerdRuntime(file);
    expect(u2.changed).to.equal(false);
    expect(fs.readFileSync(file, 'utf8')).to.equal(DEBIAN);
  });

  it('refreshes its own block when it was edited, and only that block', () => {
    fs.writeFileSync(file, DEBIAN);
    installContainerdRuntime(file);
    const edited = fs.readFileSync(file, 'utf8').replace('io.containerd.kata-ts.v2"', 'io.containerd.other.v1"');
    fs.writeFileSync(file, `${edited}\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n`);
    const r = installContainerdRuntime(file);
    expect(r.changed).to.equal(true);
    const text = fs.readFileSync(file, 'utf8');
    expect(runtimes(text)['kata-ts']).to.include({ runtime_type: 'io.containerd.kata-ts.v2' });
    expect(text).to.include('config_path = "/etc/containerd/certs.d"');
    expect(text.split('BEGIN kata-ts').length, 'one block').to.equal(2);
  });

  it('creates a missing (or comments-only) file as version 2, and takes another handler name', () => {
    const r = installContainerdRuntime(file, { handler: 'kata-fast' });
    expect(r.changed).to.equal(true);
    expect(r.backup, 'nothing to back up').to.equal(undefined);
    const text = fs.readFileSync(file, 'utf8');
    expect(parseToml(text).value.version).to.equal(2);
    expect(Object.keys(runtimes(text))).to.deep.equal(['kata-fast']);
    uninstallContainerdRuntime(file, { handler: 'kata-fast' });
    expect(fs.readFileSync(file, 'utf8')).to.equal('version = 2\n');

    const other = path.join(dir, 'comments.toml');
    fs.writeFileSync(other, '# containerd config, empty on purpose\n');
    installContainerdRuntime(other);
    const t2 = fs.readFileSync(other, 'utf8');
    expect(t2.startsWith('version = 2\n# containerd config, empty on purpose\n')).to.equal(true);
    expect(runtimes(t2)['kata-ts']).to.include({ runtime_type: 'io.containerd.kata-ts.v2' });
  });

  it('--config-path: the handler\'s options carry ConfigPath (Kata\'s way); a later install without it drops them; a bad path is refused, file untouched', () => {
    const conf = path.join(dir, 'fast.toml');
    fs.writeFileSync(conf, '[factory]\nenable_template = true\n');
    fs.writeFileSync(file, DEBIAN);
    installContainerdRuntime(file, { handler: 'kata-fast', configPath: conf, backup: false });
    const rt = runtimes(fs.readFileSync(file, 'utf8'))['kata-fast'] as Record<string, any>;
    expect(rt.runtime_type).to.equal('io.containerd.kata-ts.v2');
    expect(rt.options).to.deep.equal({ ConfigPath: conf });
    installContainerdRuntime(file, { handler: 'kata-fast', backup: false });
    expect((runtimes(fs.readFileSync(file, 'utf8'))['kata-fast'] as Record<string, any>).options).to.equal(undefined);
    uninstallContainerdRuntime(file, { handler: 'kata-fast', backup: false });
    expect(fs.readFileSync(file, 'utf8')).to.equal(DEBIAN);
    for (const [bad, msg] of [['relative.toml', /absolute/], [path.join(dir, 'missing.toml'), /no such file/], [dir, /not a regular file/]] as const) {
      expect(() => installContainerdRuntime(file, { configPath: bad, backup: false })).to.throw(ContainerdConfigError, msg);
      expect(fs.readFileSync(file, 'utf8')).to.equal(DEBIAN);
    }
  });

  it('refuses, leaving the file as it was: version 1, a handler it did not write, broken TOML, a bad handler name', () => {
    const cases: [string, string, RegExp, ContainerdConfigError['kind']][] = [
      ['v1.toml', '[plugins.cri.containerd]\n  snapshotter = "overlayfs"\n', /version 1/, 'invalid'],
      ['v3.toml', 'version = 3\n', /version 3/, 'invalid'],
      ['mine.toml', `${DEBIAN}\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-ts]\n  runtime_type = "io.containerd.kata-ts.v2"\n`, /already configured there, not by kata-ctl/, 'conflict'],
      ['broken.toml', 'version = 2\n[plugins\n', /not valid TOML: line 2/, 'invalid'],
      ['half.toml', `${DEBIAN}# BEGIN kata-ts runtime handler "kata-ts" (written by kata-ctl install containerd; kata-ctl uninstall containerd removes it)\n`, /no END marker/, 'invalid'],
    ];
    for (const [name, text, msg, kind] of cases) {
      const f = path.join(dir, name);
      fs.writeFileSync(f, text);
      let err: unknown;
      try {
        installContainerdRuntime(f);
      } catch (e) {
        err = e;
      }
      expect(err, name).to.be.instanceOf(ContainerdConfigError);
      expect((err as ContainerdConfigError).kind, name).to.equal(kind);
      expect((err as Error).message, name).to.match(msg).and.include(f);
      expect(fs.readFileSync(f, 'utf8'), `${name} untouched`).to.equal(text);
      expect(fs.existsSync(`${f}.kata-ts.bak`), `${name}: no backup`).to.equal(false);
    }
    // uninstall leaves the user's own handler alone, and says so.
    const mine = path.join(dir, 'mine.toml');
    const u = uninstallContainerdRuntime(mine);
    expect(u.changed).to.equal(false);
    expect(u.warnings.join()).to.match(/did not write/);
    expect(() => installContainerdRuntime(file, { handler: 'Kata_TS' })).to.throw(ContainerdConfigError, /DNS label/);
    expect(fs.existsSync(file)).to.equal(false);
  });

  it('warns when the config disables the CRI plugin', () => {
    fs.writeFileSync(file, 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n');
    const r = installContainerdRuntime(file);
    expect(r.changed).to.equal(true);
    expect(r.warnings.join()).to.match(/disables containerd's CRI plugin/);
  });

  it('through the CLI: install, again (no change), --dry-run, --json, uninstall; errors exit 1 with the reason', async () => {
    fs.writeFileSync(file, DEBIAN);
    const dry = await kataCtl(['install', 'containerd', '--containerd-config', file, '--dry-run']);
    expect(dry.code, dry.stderr).to.equal(0);
    expect(dry.stdout).to.equal(DEBIAN + '\n' + runtimeSnippet());
    expect(fs.readFileSync(file, 'utf8'), 'dry run writes nothing').to.equal(DEBIAN);
    const inst = await kataCtl(['install', 'containerd', '--containerd-config', file]);
    expect(inst.code, inst.stderr).to.equal(0);
    expect(inst.stdout).to.include('added runtime handler "kata-ts"').and.include(`${file}.kata-ts.bak`).and.include('restart containerd');
    const again = await kataCtl(['install', 'containerd', '--containerd-config', file, '--json']);
    expect(again.code, again.stderr).to.equal(0);
    expect(JSON.parse(again.stdout)).to.deep.include({ schemaVersion: 1, action: 'install', changed: false, handler: 'kata-ts', backup: null });
    const un = await kataCtl(['uninstall', 'containerd', '--containerd-config', file, '--no-backup']);
    expect(un.code, un.stderr).to.equal(0);
    expect(un.stdout).to.include('removed runtime handler "kata-ts"').and.not.include('.kata-ts.bak');
    expect(fs.readFileSync(file, 'utf8')).to.equal(DEBIAN);
    fs.writeFileSync(file, 'version = 1\n');
    const bad = await kataCtl(['install', 'containerd', '--containerd-config', file]);
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.match(/^kata-ctl: .*version 1/);
    const wrong = await kataCtl(['install', 'docker']);
    expect(wrong.code).to.equal(2);
  });
});
