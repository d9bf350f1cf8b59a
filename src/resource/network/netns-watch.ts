/**
 * Watches a pod's network namespace for changes (links, addresses, routes)
 * through a netlink socket subscribed to the rtnetlink multicast groups,
 * on Node's own loop (uv_poll through the addon; no thread, no timer while
 * idle). Bursts are coalesced: one callback per quiet period, so CNI
 * adding an interface, its addresses and its routes is one resync. Our own
 * tap and tc changes notify too; the resync finds nothing new for them.
 */
import * as fs from 'node:fs';
import { errorMessage } from '../../common/errors';
import { logger } from '../../common/log';
import { native } from '../../common/native';
import { NETLINK_ROUTE } from '../../protocols/netlink/socket';

const RTMGRP_LINK = 0x1;
const RTMGRP_IPV4_IFADDR = 0x10;
const RTMGRP_IPV4_ROUTE = 0x40;
const RTMGRP_IPV6_IFADDR = 0x100;
const RTMGRP_IPV6_ROUTE = 0x400;
const POLL_READABLE = 1;

export class NetnsWatcher {
  private fd: number;
  private readonly poll: number;
  private timer: NodeJS.Timeout | undefined;
  private readonly buf = Buffer.alloc(1 << 16);
  private readonly log = logger('network');

  private constructor(readonly netns: string, private readonly onChange: () => void, private readonly quietMs: number) {
    this.fd = native().netlinkOpen(NETLINK_ROUTE, netns, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE);
    // unref'd: a watcher alone must not keep the process alive.
    this.poll = native().pollStart(this.fd, POLL_READABLE, () => this.drain(), true);
  }

  static start(netns: string, onChange: () => void, quietMs = 300): NetnsWatcher {
    return new NetnsWatcher(netns, onChange, quietMs);
  }

  private drain(): void {
    if (this.fd < 0) return;
    try {
      // Readable: one read cannot block. The content does not matter, only that something changed.
      fs.readSync(this.fd, this.buf, 0, this.buf.length, null);
    } catch (err) {
      // ENOBUFS: notifications were lost — which still means "something changed".
      if ((err as NodeJS.ErrnoException).code !== 'ENOBUFS') this.log.warn('netns watch read failed', { netns: this.netns, err: errorMessage(err) });
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.onChange();
    }, this.quietMs);
  }

  close(): void {
    if (this.fd < 0) return;
    if (this.timer) clearTimeout(this.timer);
    native().pollStop(this.poll);
    fs.closeSync(this.fd);
    this.fd = -1;
  }
}
