/**
 * Our rtnetlink codec without a kernel: message and attribute framing,
 * hostile lengths, NLMSG_ERROR with and without extended acks, dumps split
 * over several datagrams, address text both ways — against a scripted
 * transport that plays the kernel's side.
 */
import { expect } from 'chai';
import {
  NLMSG_DONE, NLMSG_ERROR, NLM_F_MULTI, NetlinkError, attr, attrMap, decodeError, decodeMessages, encodeMessage, parseAttrs, read,
} from '../../../src/protocols/netlink/message';
import { NetlinkSocket, type NetlinkTransport } from '../../../src/protocols/netlink/socket';
import { AF_INET, AF_INET6, ipToBytes, ipToString, listLinks, macFromString, macToString, setLink } from '../../../src/protocols/netlink/route';

/** Plays the kernel: records what was sent, answers from a script keyed by request count. */
class ScriptedKernel implements NetlinkTransport {
  sent: Buffer[] = [];
  private queue: Buffer[] = [];
  constructor(private readonly answer: (req: Buffer, seq: number) => Buffer[]) {}
  send(b: Buffer): void {
    this.sent.push(b);
    this.queue.push(...this.answer(b, b.readUInt32LE(8)));
  }
  receive(): Buffer {
    return this.queue.shift() ?? Buffer.alloc(0);
  }
  close(): void {}
}

function ack(seq: number, errno = 0, extMsg?: string): Buffer {
  const orig = Buffer.alloc(16);
  orig.writeUInt32LE(16, 0);
  const body = Buffer.alloc(4);
  body.writeInt32LE(-errno, 0);
  const tlv = extMsg ? attr.str(1, extMsg) : Buffer.alloc(0);
  const flags = extMsg ? 0x100 | 0x200 : 0; // CAPPED | ACK_TLVS
  return encodeMessage(NLMSG_ERROR, flags, seq, Buffer.concat([body, orig]), [tlv]);
}

function linkMsg(seq: number, index: number, name: string, mac: string): Buffer {
  const hdr = Buffer.alloc(16);
  hdr.writeUInt16LE(1, 2); // ARPHRD_ETHER
  hdr.writeInt32LE(index, 4);
  hdr.writeUInt32LE(1, 8); // IFF_UP
  return encodeMessage(16, NLM_F_MULTI, seq, hdr, [attr.str(3, name), attr.raw(1, macFromString(mac)), attr.u32(4, 1500),
    attr.nested(18, [attr.str(1, 'veth')])]);
}

describe('netlink codec', () => {
  it('frames attributes with 4-byte padding and reads them back, nested ones too', () => {
    const b = Buffer.concat([attr.str(3, 'eth0'), attr.u32(4, 9000), attr.u8(7, 5), attr.nested(18, [attr.str(1, 'veth'), attr.u16(2, 7)])]);
    expect(b.length % 4).to.equal(0);
    const m = attrMap(parseAttrs(b));
    expect(read.str(m.get(3))).to.equal('eth0');
    expect(read.u32(m.get(4))).to.equal(9000);
    expect(read.u8(m.get(7))).to.equal(5);
    const inner = attrMap(parseAttrs(m.get(18)!));
    expect(read.str(inner.get(1))).to.equal('veth');
    expect(inner.get(2)!.readUInt16LE(0)).to.equal(7);
  });

  it('refuses an attribute whose length overruns its buffer, or is shorter than its header', () => {
    const good = attr.str(3, 'eth0');
    const over = Buffer.from(good);
    over.writeUInt16LE(200, 0);
    expect(() => parseAttrs(over)).to.throw(NetlinkError, /overruns/);
    const under = Buffer.from(good);
    under.writeUInt16LE(2, 0);
    expect(() => parseAttrs(under)).to.throw(NetlinkError, /length 2/);
  });

  it('refuses a message header that lies about its length', () => {
    const m = encodeMessage(16, 0, 1, Buffer.alloc(16));
    const lie = Buffer.from(m);
    lie.writeUInt32LE(m.length + 64, 0);
    expect(() => decodeMessages(lie)).to.throw(NetlinkError, /overruns/);
    const tiny = Buffer.from(m);
    tiny.writeUInt32LE(8, 0);
    expect(() => decodeMessages(tiny)).to.throw(NetlinkError);
    expect(() => decodeError({ type: NLMSG_ERROR, flags: 0, seq: 1, pid: 0, payload: Buffer.alloc(6) })).to.throw(NetlinkError, /NLMSG_ERROR of 6 bytes/);
  });

  it('never reads outside a datagram for any truncation of a valid dump answer', () => {
    const d = Buffer.concat([linkMsg(5, 2, 'eth0', '02:00:00:00:00:01'), linkMsg(5, 3, 'eth1', '02:00:00:00:00:02')]);
    for (let cut = 0; cut < d.length; cut++) {
      try {
        for (const m of decodeMessages(d.subarray(0, cut))) parseAttrs(m.payload, 16);
      } catch (err) {
        expect(err).to.be.instanceOf(NetlinkError);
      }
    }
  });

  it('decodes an error answer with the errno and the extended-ack text', () => {
    const [m] = decodeMessages(ack(9, 17, 'Exclusivity flag on, cannot modify'));
    expect(decodeError(m)).to.deep.equal({ errno: 17, message: 'Exclusivity flag on, cannot modify' });
  });

  it('formats and parses IPv4/IPv6 addresses and MACs', () => {
    expect(ipToString(AF_INET, ipToBytes('10.88.0.7'))).to.equal('10.88.0.7');
    for (const v6 of ['fe80::1', '2001:db8::8:800:200c:417a', '::1', '2001:db8:0:1:1:1:1:1', '::']) expect(ipToString(AF_INET6, ipToBytes(v6))).to.equal(v6);
    expect(ipToBytes('::ffff:10.0.0.1').toString('hex')).to.equal('00000000000000000000ffff0a000001');
    expect(macToString(macFromString('0A:1b:2c:3d:4e:5f'))).to.equal('0a:1b:2c:3d:4e:5f');
    expect(() => macFromString('0a:1b:2c')).to.throw(NetlinkError, /not a MAC/);
    expect(() => ipToBytes('10.0.0')).to.throw(NetlinkError, /not an IP/);
    expect(() => ipToString(AF_INET, Buffer.alloc(5))).to.throw(NetlinkError, /5 bytes/);
  });
});

describe('netlink socket', () => {
  it('collects a dump spread over several datagrams until NLMSG_DONE, ignoring stale sequence numbers', () => {
    const k = new ScriptedKernel((_req, seq) => [
      Buffer.concat([linkMsg(seq - 1, 9, 'stale0', '02:00:00:00:00:09'), linkMsg(seq, 1, 'lo', '00:00:00:00:00:00')]),
      linkMsg(seq, 2, 'eth0', '02:00:00:00:00:02'),
      encodeMessage(NLMSG_DONE, NLM_F_MULTI, seq, Buffer.alloc(4)),
    ]);
    const links = listLinks(new NetlinkSocket(k));
    expect(links.map((l) => [l.index, l.name, l.mac, l.mtu, l.kind])).to.deep.equal([
      [1, 'lo', '00:00:00:00:00:00', 1500, 'veth'], [2, 'eth0', '02:00:00:00:00:02', 1500, 'veth'],
    ]);
    // RTM_GETLINK with NLM_F_REQUEST | NLM_F_DUMP
    expect(k.sent[0].readUInt16LE(4)).to.equal(18);
    expect(k.sent[0].readUInt16LE(6)).to.equal(0x301);
  });

  it('turns a kernel error into a NetlinkError naming the request, errno and kernel text', () => {
    const k = new ScriptedKernel((_req, seq) => [ack(seq, 1, 'Operation not permitted here')]);
    try {
      setLink(new NetlinkSocket(k, '/var/run/netns/x'), 4, { mtu: 9000 });
      expect.fail('no error');
    } catch (err) {
      expect(err).to.be.instanceOf(NetlinkError);
      expect((err as NetlinkError).errno).to.equal(1);
      expect((err as Error).message).to.match(/set link 4 .*mtu.*EPERM.*Operation not permitted here.*\/var\/run\/netns\/x/);
    }
  });

  it('resolves a change request on its ack and encodes what it asked for', () => {
    const k = new ScriptedKernel((_req, seq) => [ack(seq)]);
    setLink(new NetlinkSocket(k), 7, { up: true, name: 'eth0' });
    const req = decodeMessages(k.sent[0])[0];
    expect(req.type).to.equal(16);
    expect(req.flags & 0x5).to.equal(0x5); // REQUEST | ACK
    expect(req.payload.readInt32LE(4)).to.equal(7);
    expect(req.payload.readUInt32LE(8) & 1).to.equal(1);
    expect(req.payload.readUInt32LE(12) & 1).to.equal(1);
    expect(read.str(attrMap(parseAttrs(req.payload, 16)).get(3))).to.equal('eth0');
  });

  it('fails, not hangs, when the socket closes mid-answer', () => {
    const k = new ScriptedKernel((_req, seq) => [linkMsg(seq, 2, 'eth0', '02:00:00:00:00:02')]);
    expect(() => listLinks(new NetlinkSocket(k))).to.throw(NetlinkError, /closed/);
  });
});
