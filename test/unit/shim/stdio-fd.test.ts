/**
 * The cause of "the shim died silently on the first exec with the virtio-fs
 * rootfs" (issue 11): the stdin fifo was opened as a FileHandle whose fd was
 * handed to a net.Socket. The socket closed the fd when the process's I/O
 * ended; the FileHandle, garbage collected later, closed the same number
 * again — by then reused. With a virtio-fs rootfs the shim's FUSE server
 * opens an fd per guest inode and per open file all the time, so the number
 * was soon one of the container's files (the guest then got EIO: the next
 * exec died of SIGBUS, 135) or an fd libuv polls (libuv aborts on EBADF: the
 * shim died, its stderr is /dev/null). With EROFS the rootfs is one blk fd
 * opened at boot, so the stray close rarely hit anything that mattered.
 *
 * This test failed with that code (the fd reused after the exec's I/O ended
 * was closed under us by the collector) and passes now that stdin is a raw
 * fd owned by the socket alone (src/shim/stdio.ts).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { execFileSync } from 'node:child_process';
import { openHostIo } from '../../../src/shim/stdio';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

async function openWriter(fifo: string): Promise<number> {
  // O_NONBLOCK: ENXIO until the shim's background open (the reader) is there.
  for (let i = 0; i < 200; i++) {
    try {
      return fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENXIO') throw err;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  throw new Error('the shim never opened the stdin fifo');
}

describe('unit: shim stdio never closes an fd it no longer owns (the virtio-fs exec crash)', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-stdio-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('fds opened after an exec\'s stdin ended survive garbage collection', async () => {
    const reused: number[] = [];
    try {
      for (let round = 0; round < 5; round++) {
        const fifo = path.join(dir, `stdin-${round}`);
        execFileSync('mkfifo', [fifo]);
        const io = openHostIo({ stdin: fifo, stdout: `file://${path.join(dir, `out-${round}`)}`, stderr: '', terminal: false });
        const w = await openWriter(fifo);
        fs.writeSync(w, `round ${round}\n`);
        const got = await new Promise<string>((resolve) => io.stdin!.once('data', (b: Buffer) => resolve(b.toString())));
        expect(got).to.equal(`round ${round}\n`);
        fs.closeSync(w);
        io.closeStdin();
        await io.close();
        await new Promise((r) => setTimeout(r, 20));
        // The numbers just freed are the lowest: the next opens reuse them, as
        // the FUSE server's lookups do in the shim.
        for (let i = 0; i < 4; i++) reused.push(fs.openSync('/dev/null', 'r'));
      }
      for (let i = 0; i < 3; i++) {
        gc();
        await new Promise((r) => setImmediate(r));
        await new Promise((r) => setTimeout(r, 10));
      }
      const closedUnderUs = reused.filter((fd) => {
        try {
          fs.fstatSync(fd);
          return false;
        } catch {
          return true;
        }
      });
      expect(closedUnderUs, 'fds closed by a garbage-collected FileHandle').to.deep.equal([]);
    } finally {
      for (const fd of reused) {
        try {
          fs.closeSync(fd);
        } catch { /* closed under us: reported above */ }
      }
    }
  });
});
