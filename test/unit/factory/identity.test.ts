import { expect } from 'chai';
import { reseedRandomDev, setGuestDateTime, IdentityError, MAX_RESEED_BYTES } from '../../../src/agent/identity';
import { native, setNativeForTests, type NativeAddon } from '../../../src/common/native';

describe('unit: agent ReseedRandomDev / SetGuestDateTime (template clones)', () => {
  let calls: unknown[][];
  beforeEach(() => {
    calls = [];
    let real: NativeAddon | undefined;
    try { real = native(); } catch { real = undefined; }
    setNativeForTests({
      ...(real ?? {}),
      clockSetRealtime: (sec: number, nsec: number) => { calls.push(['clock', sec, nsec]); return 0; },
      addEntropy: (b: Buffer) => { calls.push(['entropy', Buffer.from(b)]); return b.length * 8; },
    } as NativeAddon);
  });
  afterEach(() => setNativeForTests(undefined));

  it('sets CLOCK_REALTIME to Sec + Usec (as nanoseconds) through the addon', () => {
    setGuestDateTime(1796072000, 250000);
    expect(calls).to.deep.equal([['clock', 1796072000, 250000000]]);
  });

  it('credits the host bytes to the kernel RNG through the addon', async () => {
    const data = Buffer.from('0123456789abcdef');
    await reseedRandomDev(data);
    expect(calls).to.deep.equal([['entropy', data]]);
  });

  it('refuses bad requests with one clear error and no syscall', async () => {
    for (const [sec, usec] of [[-1, 0], [1.5, 0], [1, -1], [1, 1_000_000], [Number.MAX_VALUE, 0]] as [number, number][]) {
      expect(() => setGuestDateTime(sec, usec), `${sec} ${usec}`).to.throw(IdentityError);
    }
    for (const data of [Buffer.alloc(0), Buffer.alloc(MAX_RESEED_BYTES + 1)]) {
      const err = await reseedRandomDev(data).then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(IdentityError);
    }
    expect(calls).to.deep.equal([]);
  });

  it('a failing syscall is an IdentityError naming the RPC', async () => {
    setNativeForTests({ clockSetRealtime: () => { throw new Error('clock_settime: EPERM'); }, addEntropy: () => { throw new Error('ioctl RNDADDENTROPY: EPERM'); } } as unknown as NativeAddon);
    expect(() => setGuestDateTime(1, 0)).to.throw(IdentityError, /SetGuestDateTime: clock_settime: EPERM/);
    const err = await reseedRandomDev(Buffer.alloc(8)).then(() => undefined, (e: Error) => e);
    expect(err?.message).to.match(/ReseedRandomDev: ioctl RNDADDENTROPY: EPERM/);
  });
});
