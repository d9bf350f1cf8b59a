/**
 * Image conversion end to end on this host: OCI images (hand-made layers
 * covering every layer rule, docker/oci archives made by skopeo, an image
 * imported into a private containerd) → our EROFS metadata + chunk blobs;
 * then `fsck.erofs` and the host kernel's EROFS (metadata image + the
 * materialized device 1 on loop devices) must show exactly the tree
 * `umoci unpack` makes of the same image: contents (`diff -r`), types,
 * modes, owners, mtimes, link counts and hard-link groups, device numbers,
 * symlink targets, xattrs. Also dedup across images and the cache hit.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { configureLogging } from '../../src/common/log';
import { convertImage } from '../../src/image/convert';
import { blobsDir, imagesDir, listImages, metaPath } from '../../src/image/store';
import { skipOrFail } from '../helpers/skip';
import { familyLayers, writeLayout } from '../helpers/oci-images';
import { materializeDevice, mountImage } from '../helpers/image-device';
import { TestContainerd, buildBusyboxImage } from '../helpers/containerd';

/** Lists a tree as one line per path: type, mode, owner, size, mtime, nlink, link group, rdev, target, xattrs, content hash. */
const MANIFEST_PY = `
import os, sys, hashlib, stat, json
root = sys.argv[1]; first = {}; out = []
for d, dirs, files in os.walk(root):
    dirs.sort()
    for n in sorted(dirs + files) + ([] if d != root else ['.']):
        p = os.path.join(d, n) if n != '.' else root
        st = os.lstat(p); rel = os.path.relpath(p, root)
        grp = ''
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            grp = first.setdefault((st.st_dev, st.st_ino), rel)
        xs = {k: os.getxattr(p, k, follow_symlinks=False).hex() for k in sorted(os.listxattr(p, follow_symlinks=False))}
        h = ''
        if stat.S_ISREG(st.st_mode):
            with open(p, 'rb') as f: h = hashlib.sha256(f.read()).hexdigest()
        tgt = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ''
        mt = st.st_mtime_ns
        nl = st.st_nlink
        out.append([rel, oct(st.st_mode), st.st_uid, st.st_gid, st.st_size if not stat.S_ISDIR(st.st_mode) else 0, mt, nl, grp, st.st_rdev, tgt, xs, h])
print(json.dumps(out))
`;

type Row = [string, string, number, number, number, number, number, string, number, string, Record<string, string>, string];

function manifest(dir: string): Row[] {
  const r = spawnSync('python3', ['-c', MANIFEST_PY, dir], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`tree manifest of ${dir} failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Row[];
}

/** Directory mtimes change when an unpacker writes into them; compare them apart. */
function withoutDirMtimes(rows: Row[]): Row[] {
  return rows.map((r) => (r[1].startsWith('0o40') ? [...r.slice(0, 5), 0, ...r.slice(6)] as Row : r));
}

/** `diff -r`; only special files (which diff cannot compare) may be reported. */
function diffTrees(a: string, b: string): void {
  const r = spawnSync('diff', ['-r', '--no-dereference', a, b], { encoding: 'utf8' });
  const lines = r.stdout.split('\n').filter((l) => l && !/^File .* is a (fifo|character special file|block special file) while file .* is a \1$/.test(l));
  expect(lines, `diff -r ${a} ${b}`).to.deep.equal([]);
}

function umociUnpack(layout: string, tag: string, work: string): string {
  const bundle = fs.mkdtempSync(path.join(work, 'umoci-'));
  fs.rmdirSync(bundle);
  execFileSync('umoci', ['unpack', '--image', `${layout}:${tag}`, bundle], { stdio: 'pipe' });
  return path.join(bundle, 'rootfs');
}

/** Converted image vs umoci's unpack: kernel mount and fsck.erofs extraction. */
function checkAgainstUmoci(store: string, id: string, layout: string, tag: string, work: string): Row[] {
  const ref = umociUnpack(layout, tag, work);
  const want = manifest(ref);
  expect(want.length, 'umoci unpacked nothing').to.be.greaterThan(5);
  const dev = path.join(work, 'fsck.dev');
  materializeDevice(store, id, dev);
  const hex = id.slice(7);
  const x = path.join(fs.mkdtempSync(path.join(work, 'fsck-')), 'tree');
  const f = spawnSync('fsck.erofs', [`--device=${dev}`, `--extract=${x}`, metaPath(store, hex)], { encoding: 'utf8' });
  fs.rmSync(dev);
  expect(f.status, `fsck.erofs: ${f.stdout}${f.stderr}`).to.equal(0);
  diffTrees(x, ref);
  fs.rmSync(path.dirname(x), { recursive: true });
  const m = mountImage(store, id, work);
  try {
    diffTrees(m.mnt, ref);
    const got = manifest(m.mnt);
    // The kernel sees every inode field; dir mtimes too (umoci restores them after writing children).
    expect(withoutDirMtimes(got)).to.deep.equal(withoutDirMtimes(want));
    expect(got.filter((r) => r[1].startsWith('0o40')).map((r) => [r[0], r[5]]), 'directory mtimes').to.deep.equal(want.filter((r) => r[1].startsWith('0o40')).map((r) => [r[0], r[5]]));
    return got;
  } finally { m.cleanup(); }
}

function treeSnapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const n of fs.readdirSync(d).sort()) {
      const p = path.join(d, n);
      const st = fs.lstatSync(p);
      out.push(`${path.relative(dir, p)} ${st.size} ${st.mtimeMs}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

describe('image conversion: OCI → EROFS + chunk blobs, checked by the host kernel and fsck.erofs', function () {
  this.timeout(300_000);
  let work = '';
  let store = '';
  let layout = '';
  let ids: Record<string, string> = {};

  before(function () {
    configureLogging({ silent: true });
    if (process.getuid?.() !== 0) skipOrFail(this, 'loop devices and mount need root');
    for (const b of ['umoci', 'skopeo', 'fsck.erofs', 'losetup', 'python3', '/bin/busybox']) {
      if (spawnSync('sh', ['-c', `command -v ${b}`]).status !== 0) skipOrFail(this, `${b} missing (apt-get install umoci skopeo erofs-utils python3 busybox-static)`);
    }
    if (!fs.readFileSync('/proc/filesystems', 'utf8').includes('erofs')) skipOrFail(this, 'the host kernel has no EROFS', { hostCannot: true });
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-imgconv-'));
    store = path.join(work, 'store');
    layout = path.join(work, 'layout');
    const { base, upper } = familyLayers();
    ids = writeLayout(layout, [{ tag: 'base', layers: [{ tar: base }] }, { tag: 'v2', layers: [{ tar: base }, { tar: upper }], config: { Entrypoint: ['/bin/sh'], WorkingDir: '/home', User: '1000' } }]);
  });

  after(() => {
    if (!work) return;
    for (const l of execFileSync('losetup', ['-a'], { encoding: 'utf8' }).split('\n')) if (l.includes(work)) spawnSync('losetup', ['-d', l.split(':')[0]]);
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('converts DIR:TAG; the kernel mounts it with the tree umoci unpacks; fsck.erofs passes', async () => {
    const r = await convertImage(`${layout}:base`, { store, progress: false });
    expect(r.id).to.equal(ids.base);
    expect(r.cached).to.equal(false);
    expect(r.record.totals.newChunks).to.equal(r.record.totals.chunks);
    const rows = new Map(checkAgainstUmoci(store, r.id, layout, 'base', work).map((x) => [x[0], x]));
    // Spot checks that the comparison saw the interesting inodes at all.
    expect(rows.get('etc/hostname')![10]).to.deep.equal({ 'trusted.t': '000102ff', 'user.origin': Buffer.from('base').toString('hex') });
    expect(rows.get('bin/ls')!.slice(6, 8)).to.deep.equal([2, 'bin/busybox']);
    expect(rows.get('bin/busybox')![1]).to.equal('0o104755');
    expect(rows.get('home/big-uid')!.slice(2, 4)).to.deep.equal([3_000_000_000, 70000]);
    expect(rows.get('etc/passwd')![5]).to.equal(1_500_000_123_250_000_000);
    expect(rows.get('dev/big-minor')![8]).to.be.greaterThan(0);
  });

  it('a second image sharing the base stores only its new chunks; whiteouts, opaque dirs and cross-layer hard links apply as in umoci', async () => {
    const before = fs.readdirSync(blobsDir(store)).reduce((a, b) => a + fs.statSync(path.join(blobsDir(store), b)).size, 0);
    const r = await convertImage(`${layout}:v2`, { store, progress: false });
    expect(r.id).to.equal(ids.v2);
    // New in v2: data/more (2 MiB of noise = 2 chunks, stored raw); busybox and data/big come from the store.
    expect(r.record.totals.newChunks).to.equal(2);
    const after = fs.readdirSync(blobsDir(store)).reduce((a, b) => a + fs.statSync(path.join(blobsDir(store), b)).size, 0);
    expect(after - before).to.equal(r.record.totals.newBlobBytes);
    expect(r.record.totals.newBlobBytes).to.equal(2 << 20);
    expect(r.record.config).to.deep.include({ entrypoint: ['/bin/sh'], cwd: '/home', user: '1000' });
    checkAgainstUmoci(store, r.id, layout, 'v2', work);
  });

  it('re-converting is a cache hit that writes nothing', async () => {
    const snap = treeSnapshot(store);
    const r = await convertImage(`${layout}:v2`, { store, progress: false });
    expect(r.cached).to.equal(true);
    expect(r.id).to.equal(ids.v2);
    expect(treeSnapshot(store)).to.deep.equal(snap);
  });

  it('is deterministic: the same image into a fresh store gives the same bytes', async () => {
    const other = path.join(work, 'store2');
    await convertImage(`${layout}:base`, { store: other, progress: false });
    const hex = ids.base.slice(7);
    expect(fs.readFileSync(metaPath(other, hex)).equals(fs.readFileSync(metaPath(store, hex)))).to.equal(true);
    fs.rmSync(other, { recursive: true });
  });

  it('docker-archive and oci-archive files made by skopeo convert to the same tree', async () => {
    const dockerTar = path.join(work, 'docker.tar');
    const ociTar = path.join(work, 'oci.tar');
    execFileSync('skopeo', ['copy', '-q', `oci:${layout}:v2`, `docker-archive:${dockerTar}:kts/family:v2`], { stdio: 'pipe' });
    execFileSync('skopeo', ['copy', '-q', `oci:${layout}:v2`, `oci-archive:${ociTar}:v2`], { stdio: 'pipe' });
    const d = await convertImage(dockerTar, { store, progress: false });
    expect(d.record.references.join(' ')).to.match(/kts\/family:v2/);
    checkAgainstUmoci(store, d.id, layout, 'v2', work);
    // Same file contents as the layout's v2 (other manifest): no new chunks at all.
    expect(d.id).to.not.equal(ids.v2);
    expect(d.record.totals.newChunks).to.equal(0);
    // skopeo keeps the manifest in an oci-archive: same id, so a cache hit.
    const o = await convertImage(`${ociTar}:v2`, { store, progress: false });
    expect(o.id).to.equal(ids.v2);
    expect(o.cached).to.equal(true);
  });

  it('containerd:REF reads an image `ctr images import` put in containerd\'s content store', async function () {
    const cd = new TestContainerd();
    try {
      await cd.start();
      await cd.importImage();
      const ref = 'docker.io/kata-ts-test/busybox:latest';
      const r = await convertImage(`containerd:${ref}`, {
        store, progress: false,
        containerd: { address: cd.socket, namespace: cd.namespace, contentDir: path.join(cd.dir, 'root', 'io.containerd.content.v1.content') },
      });
      const ls = await cd.ctr(['images', 'ls']);
      const row = ls.stdout.split('\n').find((l) => l.startsWith(`${ref} `))!;
      expect(row.split(/\s+/)[2]).to.equal(r.id);
      // Reference tree: umoci's unpack of the same OCI archive.
      const x = path.join(work, 'bb-layout');
      fs.mkdirSync(x);
      execFileSync('tar', ['-xf', buildBusyboxImage(fs.mkdtempSync(path.join(work, 'bb-'))), '-C', x]);
      checkAgainstUmoci(store, r.id, x, 'latest', work);
      const err = await convertImage('containerd:docker.io/no/such:image', { store, progress: false, containerd: { address: cd.socket, namespace: cd.namespace } }).then(() => null, (e: Error) => e);
      expect(err?.message).to.match(/has no image "docker.io\/no\/such:image"/);
    } finally {
      await cd.stop();
    }
  });

  it('lists every converted image and leaves no temp dirs', () => {
    const ls = listImages(store).map((r) => r.id);
    expect(ls).to.include.members([ids.base, ids.v2]);
    expect(fs.readdirSync(imagesDir(store)).filter((n) => n.startsWith('.tmp-'))).to.deep.equal([]);
  });
});
