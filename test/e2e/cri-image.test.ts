/**
 * Kubernetes containers from converted images (issue 12), driven through
 * containerd's CRI plugin the way a kubelet drives it (test/helpers/cri.ts,
 * private containerd of test/helpers/cri-containerd.ts), with kata-ts's
 * `[image] containerd_images = true`:
 *
 * - an image made here (busybox + a layer with a marker file and a whiteout,
 *   an entrypoint and an env of its own; no registry) is imported into
 *   containerd's k8s.io namespace with `ctr images import`;
 * - a pod's container from it (no command: the image's entrypoint) runs from
 *   the converted image — its root is the guest overlay over the image's
 *   EROFS, not a share of containerd's snapshot — with the image's files,
 *   entrypoint and env; the store holds exactly that image, converted from
 *   containerd's content store (keyed by CRI's image-name annotation), and
 *   `kata-ts image ls` lists it;
 * - a second container from the same image converts nothing;
 * - the pod's sandbox (pause) container does not carry the annotation and
 *   converts nothing;
 * - what containerd still does with the snapshot (README "containerd and
 *   converted images"): an image imported with `--no-unpack` is unpacked
 *   into the snapshotter by CRI at its first CreateContainer all the same
 *   (containerd 1.6's WithNewSnapshot retries after Unpack), and every
 *   container gets an active snapshot — the shim never reads either;
 * - removing the pod leaves nothing behind.
 *
 * Under CI=true a missing prerequisite (containerd, CNI plugins, guest)
 * fails the suite instead of skipping it.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type CriContainerd, startCriContainerd, stopCriContainerd } from '../helpers/cri-containerd';
import { printContainerdLogOnFailure } from '../helpers/containerd';
import { type ContainerConfig, type PodSandboxConfig } from '../helpers/cri';
import { REPO } from '../helpers/guest';
import { buildOciLayout } from '../helpers/oci-layout';
import { runCommand } from '../helpers/spawn';
import { until } from '../helpers/until';
import { imagesDir, listImages } from '../../src/image/store';

const IMAGE = 'docker.io/kata-ts-test/converted:1';
/** The same shape, another marker, imported with --no-unpack. */
const IMAGE2 = 'docker.io/kata-ts-test/converted:2';
const MARKER = 'made-for-the-cri-image-test';
/** Prints what the test checks, then idles until told to stop. */
const ENTRY = 'echo "entry env=$FROM_IMAGE"; cat /etc/ktsimg/marker; ls /etc/ktsimg; grep " / " /proc/mounts; echo entry-done; trap "exit 0" TERM; while :; do sleep 1 & wait $!; done';

/** busybox + applets in one layer, the marker (and a whiteout of a lower file) in a second. */
function buildImage(dir: string, name = IMAGE, marker = MARKER): string {
  const base = path.join(dir, 'base');
  for (const d of ['bin', 'etc/ktsimg', 'tmp', 'proc', 'sys', 'dev']) fs.mkdirSync(path.join(base, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(base, 'bin', 'busybox'));
  fs.chmodSync(path.join(base, 'bin', 'busybox'), 0o755);
  for (const a of execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
    if (a !== 'busybox') fs.symlinkSync('busybox', path.join(base, 'bin', a));
  }
  fs.writeFileSync(path.join(base, 'etc', 'ktsimg', 'gone'), 'the upper layer removes this\n');
  const upper = path.join(dir, 'upper');
  fs.mkdirSync(path.join(upper, 'etc', 'ktsimg'), { recursive: true });
  fs.writeFileSync(path.join(upper, 'etc', 'ktsimg', 'marker'), `${marker}\n`);
  fs.writeFileSync(path.join(upper, 'etc', 'ktsimg', '.wh.gone'), '');
  const layout = path.join(dir, 'layout');
  buildOciLayout(layout, {
    tag: '1', layers: [base, upper],
    entrypoint: ['/bin/sh', '-c'], cmd: [ENTRY], env: ['PATH=/bin', 'FROM_IMAGE=converted-env'],
  });
  // ctr names an imported OCI image after this annotation.
  const idx = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')) as { manifests: { annotations: Record<string, string> }[] };
  idx.manifests[0].annotations['io.containerd.image.name'] = name;
  fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify(idx));
  const tar = path.join(dir, `converted-${marker}.tar`);
  execFileSync('tar', ['-C', layout, '-cf', tar, '.']);
  for (const d of [base, upper, layout]) fs.rmSync(d, { recursive: true, force: true });
  return tar;
}

describe('e2e: CRI containers from converted images (kata-ts, [image] containerd_images)', function () {
  this.timeout(600000);
  let cd: CriContainerd | undefined;
  let store = '';

  before(async function () {
    cd = await startCriContainerd(this, 'kata-ts', (c) => {
      store = path.join(c.dir, 'store');
      return `[image]\nstore_dir = "${store}"\ncontainerd_images = true\ncontainerd_content_dir = "${c.dir}/root/io.containerd.content.v1.content"\n`;
    });
    const tar = buildImage(cd.dir);
    const r = await cd.ctr(['images', 'import', tar]);
    expect(r.code, r.stderr).to.equal(0);
    fs.rmSync(tar);
    expect(await cd.cri.imageStatus(IMAGE), `CRI sees ${IMAGE}`).to.not.equal(null);
  });

  after(() => stopCriContainerd(cd));

  afterEach(function () {
    printContainerdLogOnFailure(this, cd, { only: /level=(error|warning)|converted/, lines: 20 });
  });

  let podId = '';
  let pod: PodSandboxConfig;
  let first = '';
  /** No command: the image's entrypoint + cmd, as a kubelet leaves them. */
  const ctr = (name: string, image = IMAGE): ContainerConfig => ({ metadata: { name, attempt: 0 }, image: { image }, log_path: `${name}/0.log`, linux: {} });
  /** containerd's snapshots in k8s.io: name → kind (Committed: unpacked layers, Active: containers). */
  const snapshots = async (): Promise<Map<string, string>> => {
    const r = await cd!.ctr(['snapshots', 'ls']);
    expect(r.code, r.stderr).to.equal(0);
    return new Map(r.stdout.split('\n').slice(1).map((l) => l.trim().split(/\s+/)).filter((c) => c.length >= 2).map((c) => [c[0], c[c.length - 1]]));
  };

  const converted = (): string[] => (fs.existsSync(imagesDir(store)) ? fs.readdirSync(imagesDir(store)).filter((n) => /^[0-9a-f]{64}$/.test(n)) : []);

  it('runs a pod\'s containers from the image converted once from containerd\'s content store', async () => {
    const c = cd!;
    const logDir = path.join(c.dir, 'pods', 'img');
    fs.mkdirSync(logDir, { recursive: true });
    pod = {
      metadata: { name: 'img', uid: 'uid-img', namespace: 'cri-image', attempt: 0 },
      hostname: 'img-host',
      log_directory: logDir,
      linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
    };
    podId = await c.cri.runPodSandbox(pod, 'kata-ts');
    expect(converted(), 'the sandbox (pause) container converts nothing').to.deep.equal([]);

    first = await c.cri.createContainer(podId, ctr('first'), pod);
    await c.cri.startContainer(first);
    const log = path.join(logDir, 'first', '0.log');
    const out = await until('the entrypoint\'s output in the CRI log', () => {
      const s = fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '';
      return s.includes('entry-done') ? s : undefined;
    }, 300000, 500);
    expect(out).to.include('entry env=converted-env');
    expect(out).to.include(MARKER);
    expect(out, 'the upper layer\'s whiteout applies').to.not.match(/\bgone\b/);
    // Root: the guest overlay over the converted image's EROFS, not a share of the snapshot.
    expect(out).to.match(new RegExp(`overlay / overlay .*lowerdir=/run/kata-ts/storage/${first}`));
    expect(out).to.not.match(/ \/ virtiofs /);

    const ids = converted();
    expect(ids, 'one converted image').to.have.length(1);
    const rec = listImages(store);
    expect(rec.map((r) => r.id)).to.deep.equal([`sha256:${ids[0]}`]);
    expect(rec[0].references.join(' ')).to.include(`containerd:${IMAGE}`);
    expect(rec[0].layers).to.have.length(2);
    const ls = await runCommand(path.join(REPO, 'bin', 'kata-ts'), ['image', 'ls', '--store', store]);
    expect(ls.code, ls.stderr).to.equal(0);
    expect(ls.stdout).to.include(ids[0].slice(0, 12));
    const dirMtime = fs.statSync(path.join(imagesDir(store), ids[0])).mtimeMs;
    const blobs = fs.readdirSync(path.join(store, 'blobs', 'sha256')).sort();

    // A second container from the same image, in the same pod: nothing converted.
    const second = await c.cri.createContainer(podId, ctr('second'), pod);
    await c.cri.startContainer(second);
    const r = await c.cri.execSync(second, ['sh', '-c', 'cat /etc/ktsimg/marker; echo "$FROM_IMAGE"; grep " / " /proc/mounts'], 120);
    expect(r.exit_code, r.stderr.toString()).to.equal(0);
    const so = r.stdout.toString();
    expect(so).to.include(MARKER);
    expect(so).to.include('converted-env');
    expect(so).to.match(new RegExp(`overlay / overlay .*lowerdir=/run/kata-ts/storage/${second}`));
    expect(converted()).to.deep.equal(ids);
    expect(fs.statSync(path.join(imagesDir(store), ids[0])).mtimeMs, 'nothing converted again').to.equal(dirMtime);
    expect(fs.readdirSync(path.join(store, 'blobs', 'sha256')).sort(), 'no new blobs').to.deep.equal(blobs);

    // Writes go to the container's own overlay: the first container does not see them.
    const w = await c.cri.execSync(second, ['sh', '-c', 'echo changed > /etc/ktsimg/marker && cat /etc/ktsimg/marker'], 60);
    expect(w.stdout.toString().trim()).to.equal('changed');
    const f = await c.cri.execSync(first, ['cat', '/etc/ktsimg/marker'], 60);
    expect(f.stdout.toString().trim()).to.equal(MARKER);

    await c.cri.stopContainer(second, 5);
    await c.cri.removeContainer(second);
  });

  it('containerd still unpacks the image for CRI (also one imported with --no-unpack); the shim does not read it', async () => {
    const c = cd!;
    expect(podId, 'the pod of the first test').to.not.equal('');
    const tar = buildImage(path.join(c.dir, 'img2'), IMAGE2, 'second-image');
    const r = await c.ctr(['images', 'import', '--no-unpack', tar]);
    expect(r.code, r.stderr).to.equal(0);
    fs.rmSync(path.join(c.dir, 'img2'), { recursive: true, force: true });
    const before = await snapshots();
    const id = await c.cri.createContainer(podId, ctr('third', IMAGE2), pod);
    const after = await snapshots();
    const added = [...after].filter(([k]) => !before.has(k));
    // The image's two layers, unpacked now by CreateContainer, and the container's own active snapshot.
    expect(added.filter(([, kind]) => kind === 'Committed'), 'layers unpacked at CreateContainer').to.have.length(2);
    expect(added.filter(([k, kind]) => kind === 'Active' && k === id), 'the container\'s active snapshot').to.have.length(1);
    await c.cri.startContainer(id);
    const x = await c.cri.execSync(id, ['sh', '-c', 'cat /etc/ktsimg/marker; grep " / " /proc/mounts'], 120);
    expect(x.exit_code, x.stderr.toString()).to.equal(0);
    expect(x.stdout.toString()).to.include('second-image');
    expect(x.stdout.toString(), 'runs from its converted image all the same').to.match(new RegExp(`overlay / overlay .*lowerdir=/run/kata-ts/storage/${id}`));
    expect(converted(), 'the second image converted').to.have.length(2);
    await c.cri.stopContainer(id, 5);
    await c.cri.removeContainer(id);
  });

  it('removing the pod stops its VM', async () => {
    const c = cd!;
    expect(podId, 'the pod of the first test').to.not.equal('');
    await c.cri.stopContainer(first, 5);
    await c.cri.removeContainer(first);
    await c.cri.stopPodSandbox(podId);
    await c.cri.removePodSandbox(podId);
    expect(c.qemuPids(), 'the pod\'s VM is gone').to.deep.equal([]);
  });
});
