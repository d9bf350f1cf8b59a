/**
 * setProcessNice (src/factory/renice.ts): every thread of a process gets
 * the nice value, not only its main thread (os.setPriority's behaviour on
 * Linux, which left a claimed cached VM's vCPU thread nice'd).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { spawn, type ChildProcess } from 'node:child_process';
import { setProcessNice } from '../../../src/factory/renice';

function threadNices(pid: number): number[] {
  return fs.readdirSync(`/proc/${pid}/task`).flatMap((t) => {
    try {
      const st = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      return [Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[16])];
    } catch {
      return [];
    }
  });
}

describe('factory/renice', () => {
  let child: ChildProcess | undefined;
  afterEach(() => {
    child?.kill('SIGKILL');
    child = undefined;
  });

  it('sets the nice value of every thread, where os.setPriority sets the main thread only', async () => {
    // node has threads of its own (V8 platform workers) from its start.
    child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    await new Promise((r) => child!.once('spawn', r));
    const pid = child.pid!;
    for (let i = 0; i < 50 && threadNices(pid).length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    expect(threadNices(pid).length).to.be.greaterThan(1);
    os.setPriority(pid, 7);
    expect(threadNices(pid).filter((n) => n === 7)).to.have.length(1); // what the VM cache did before
    expect(setProcessNice(pid, 9)).to.equal(threadNices(pid).length);
    expect(threadNices(pid).every((n) => n === 9)).to.equal(true);
    setProcessNice(pid, 0);
    expect(threadNices(pid).every((n) => n === 0)).to.equal(true);
  });

  it('a process that is gone: nothing set, no throw', () => {
    const gone = spawn('true');
    return new Promise<void>((r) => gone.once('exit', () => {
      expect(setProcessNice(gone.pid!, 5)).to.equal(0);
      r();
    }));
  });
});
