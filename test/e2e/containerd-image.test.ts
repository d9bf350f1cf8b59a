/**
 * containerd containers from converted images (issue 12): `ctr run` with
 * the io.kata-ts.image annotation makes the shim convert the image from
 * containerd's content store on first use and run the container from the
 * converted image (EROFS metadata disk + our blob device + overlay in the
 * guest) instead of sharing containerd's snapshot; a second container
 * converts nothing; an image that cannot be found fails Create plainly and
 * leaves no shim or VM.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IMAGE, RUNTIME, TestContainerd, startTestContainerd, stopTestContainerd } from '../helpers/containerd';
import { IMAGE_ANNOTATION } from '../../src/runtime/image-rootfs';
import { imagesDir } from '../../src/image/store';

describe('e2e: containerd containers from converted images (io.containerd.kata-ts.v2)', function () {
  this.timeout(300000);
  let cd: TestContainerd;
  let store = '';

  before(async function () {
    cd = await startTestContainerd(this, (c) => {
      store = path.join(c.dir, 'store');
      return `[image]\nstore_dir = "${store}"\ncontainerd_content_dir = "${c.dir}/root/io.containerd.content.v1.content"\n`;
    });
  });

  after(async () => {
    await stopTestContainerd(cd);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') process.stdout.write(`containerd log tail:\n${cd.log.split('\n').slice(-25).join('\n')}\n`);
  });

  const rootLine = 'grep " / " /proc/mounts; echo done';

  it('converts the image once and runs containers from it, not from the snapshot', async () => {
    const r1 = await cd.ctr(['run', '--rm', '--runtime', RUNTIME, '--annotation', `${IMAGE_ANNOTATION}=${IMAGE}`, IMAGE, 'img1', 'sh', '-c', rootLine]);
    expect(r1.code, r1.stderr).to.equal(0);
    // Root is the guest overlay over the converted image's EROFS, not a virtio-fs share of the snapshot.
    expect(r1.stdout).to.match(/^overlay \/ overlay .*lowerdir=\/run\/kata-ts\/storage\/img1/m);
    expect(r1.stdout).to.match(/done\s*$/);
    const images = fs.readdirSync(imagesDir(store)).filter((n) => /^[0-9a-f]{64}$/.test(n));
    expect(images).to.have.length(1);
    const mtime = fs.statSync(path.join(imagesDir(store), images[0])).mtimeMs;
    const r2 = await cd.ctr(['run', '--rm', '--runtime', RUNTIME, '--annotation', `${IMAGE_ANNOTATION}=${IMAGE}`, IMAGE, 'img2', 'sh', '-c', 'echo second > /x && cat /x']);
    expect(r2.code, r2.stderr).to.equal(0);
    expect(r2.stdout.trim()).to.equal('second');
    expect(fs.readdirSync(imagesDir(store)).filter((n) => /^[0-9a-f]{64}$/.test(n))).to.deep.equal(images);
    expect(fs.statSync(path.join(imagesDir(store), images[0])).mtimeMs, 'nothing converted again').to.equal(mtime);
    // Without the annotation the snapshot path is unchanged (virtio-fs share by default).
    const r3 = await cd.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, 'img3', 'sh', '-c', rootLine]);
    expect(r3.code, r3.stderr).to.equal(0);
    expect(r3.stdout).to.match(/ \/ virtiofs /);
  });

  it('an image that cannot be found or converted fails Create plainly and leaves nothing behind', async () => {
    const r = await cd.ctr(['run', '--rm', '--runtime', RUNTIME, '--annotation', `${IMAGE_ANNOTATION}=docker.io/nope/missing:1`, IMAGE, 'img4', 'true']);
    expect(r.code).to.not.equal(0);
    expect(r.stderr).to.match(/io\.kata-ts\.image=docker\.io\/nope\/missing:1/);
    await cd.ctr(['containers', 'delete', 'img4']);
    expect(cd.qemuPids()).to.deep.equal([]);
  });
});
