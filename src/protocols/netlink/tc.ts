/**
 * Traffic control over rtnetlink (linux/pkt_sched.h, linux/pkt_cls.h,
 * linux/tc_act/tc_mirred.h): what Kata's tc mirroring needs, nothing more —
 * an ingress qdisc on a device, and on it a match-everything u32 filter
 * whose mirred action redirects every frame to another device's egress.
 * Two such filters (veth → tap, tap → veth) join a CNI interface and the
 * VM's tap without a bridge, as runtime-rs `network/network_model/tc_filter_model.rs`
 * does. u32 rather than matchall: matchall is a module many hosts (these
 * included) do not load on demand; u32 with one zero-mask key matches all.
 */
import { NLM_F_CREATE, NLM_F_EXCL, attr } from './message';
import type { NetlinkSocket } from './socket';

const RTM_NEWQDISC = 36;
const RTM_DELQDISC = 37;
const RTM_NEWTFILTER = 44;

const TCA_KIND = 1;
const TCA_OPTIONS = 2;
/** TC_H_INGRESS: the parent id of an ingress qdisc. */
export const TC_H_INGRESS = 0xfffffff1;
/** The ingress qdisc's own handle, ffff:0. */
export const INGRESS_HANDLE = 0xffff0000;

const TCA_U32_SEL = 5;
const TCA_U32_ACT = 7;
const TC_U32_TERMINAL = 1;
const TCA_ACT_KIND = 1;
const TCA_ACT_OPTIONS = 2;
const TCA_MIRRED_PARMS = 2;
const TC_ACT_STOLEN = 4;
const TCA_EGRESS_REDIR = 1;
const ETH_P_ALL = 0x0003;

function tcmsg(ifindex: number, handle: number, parent: number, info = 0): Buffer {
  const b = Buffer.alloc(20);
  b[0] = 0; // AF_UNSPEC
  b.writeInt32LE(ifindex, 4);
  b.writeUInt32LE(handle >>> 0, 8);
  b.writeUInt32LE(parent >>> 0, 12);
  b.writeUInt32LE(info >>> 0, 16);
  return b;
}

/** `tc qdisc add dev IFINDEX ingress` (EEXIST if one is there already). */
export function addIngressQdisc(s: NetlinkSocket, ifindex: number): void {
  s.request(`add ingress qdisc on link ${ifindex}`, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, tcmsg(ifindex, INGRESS_HANDLE, TC_H_INGRESS), [attr.str(TCA_KIND, 'ingress')]);
}

/** `tc qdisc del dev IFINDEX ingress`: takes the qdisc's filters with it. */
export function deleteIngressQdisc(s: NetlinkSocket, ifindex: number): void {
  s.request(`delete ingress qdisc on link ${ifindex}`, RTM_DELQDISC, 0, tcmsg(ifindex, INGRESS_HANDLE, TC_H_INGRESS), [attr.str(TCA_KIND, 'ingress')]);
}

/** struct tc_u32_sel with one key {mask 0, val 0, off 0}: matches every packet. */
function matchAllSelector(): Buffer {
  const b = Buffer.alloc(16 + 16);
  b[0] = TC_U32_TERMINAL; // flags
  b[2] = 1; // nkeys
  // offmask, off, offoff, hoff, hmask and the key's mask/val/off/offmask: all 0
  return b;
}

/** struct tc_mirred: tc_gen {index, capab, action, refcnt, bindcnt} + eaction + ifindex. */
function mirredParms(toIfindex: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeInt32LE(TC_ACT_STOLEN, 8); // action: the frame is consumed by the redirect
  b.writeInt32LE(TCA_EGRESS_REDIR, 20);
  b.writeUInt32LE(toIfindex, 24);
  return b;
}

/**
 * `tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0 action
 * mirred egress redirect dev TO`: every frame arriving on FROM leaves by TO.
 */
export function addRedirectFilter(s: NetlinkSocket, fromIfindex: number, toIfindex: number, prio = 49152): void {
  const info = ((prio & 0xffff) << 16) | ((ETH_P_ALL >> 8) | ((ETH_P_ALL & 0xff) << 8)); // protocol in network byte order
  const action = attr.nested(1, [attr.str(TCA_ACT_KIND, 'mirred'), attr.nested(TCA_ACT_OPTIONS, [attr.raw(TCA_MIRRED_PARMS, mirredParms(toIfindex))])]);
  s.request(`redirect link ${fromIfindex} → ${toIfindex} (tc mirred)`, RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, tcmsg(fromIfindex, 0, INGRESS_HANDLE, info), [
    attr.str(TCA_KIND, 'u32'),
    attr.nested(TCA_OPTIONS, [attr.raw(TCA_U32_SEL, matchAllSelector()), attr.nested(TCA_U32_ACT, [action])]),
  ]);
}
