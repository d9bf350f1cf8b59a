import { expect } from 'chai';
import { makeCloneUnique, RESEED_BYTES, type CloneIdentityAgent } from '../../../src/factory/sandbox-clone';

/** A fake agent whose RPCs answer only when the test says so. */
function fakeAgent(fail?: 'reseed' | 'time') {
  const sent: string[] = [];
  const answers: Array<() => void> = [];
  let seed: Buffer | undefined;
  let time: [number, number] | undefined;
  const rpc = (name: 'reseed' | 'time') => new Promise<unknown>((resolve, reject) => {
    sent.push(name);
    answers.push(() => (fail === name ? reject(new Error(`${name} refused`)) : resolve({})));
  });
  const agent: CloneIdentityAgent = {
    reseedRandomDev: (d) => { seed = d; return rpc('reseed'); },
    setGuestDateTime: (sec, usec) => { time = [sec, usec]; return rpc('time'); },
  };
  return { agent, sent, answerAll: () => answers.forEach((a) => a()), seed: () => seed, time: () => time };
}

describe('unit: a clone is made unique (ReseedRandomDev and SetGuestDateTime after the first RPC)', () => {
  it('sends both requests before either answers, with fresh host bytes and the host time', async () => {
    const f = fakeAgent();
    const before = Date.now();
    const done = makeCloneUnique(f.agent);
    await new Promise((r) => setImmediate(r));
    expect(f.sent).to.deep.equal(['reseed', 'time']);
    f.answerAll();
    await done;
    expect(f.seed()).to.have.length(RESEED_BYTES);
    expect(f.seed()!.equals(Buffer.alloc(RESEED_BYTES))).to.equal(false);
    const [sec, usec] = f.time()!;
    const ms = sec * 1000 + usec / 1000;
    expect(ms).to.be.within(before, Date.now());
    expect(Number.isInteger(sec) && Number.isInteger(usec) && usec < 1_000_000).to.equal(true);
  });

  it('either request failing fails the whole step', async () => {
    for (const which of ['reseed', 'time'] as const) {
      const f = fakeAgent(which);
      const done = makeCloneUnique(f.agent).then(() => undefined, (e: Error) => e);
      await new Promise((r) => setImmediate(r));
      f.answerAll();
      expect((await done)?.message).to.equal(`${which} refused`);
    }
  });
});
