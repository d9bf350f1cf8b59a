// Network-namespace-aware fds for pod networking (src/resource/network,
// src/protocols/netlink). A netlink socket and a tap device both belong to
// the network namespace of the thread that created them, for their whole
// life; so each function here runs its socket()/open()+TUNSETIFF on a
// short-lived thread that first setns()es into the pod's namespace (a net
// namespace may be entered by one thread of a multithreaded process), and
// hands the fd back. Node's own threads never change namespace. Everything
// after that — netlink messages, tc, link settings — is plain read/write
// on the fd, encoded in TypeScript. The same holds for a listening TCP
// socket (CRI port-forward, src/runtime/port-forward.ts): made in the pod's
// namespace, accepted on by Node's own loop.
#include <napi.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cstring>
#include <string>
#include <thread>
#include "errors.h"

namespace {

// <linux/netfilter_ipv4.h> has it, but its <linux/in.h> clashes with <netinet/in.h>.
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif

#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif

struct Result {
  int fd = -1;
  int err = 0;
  const char* syscall = "";
  std::string name;
};

// Runs fn on a fresh thread inside the namespace at nsPath ("" = ours).
template <typename Fn>
Result InNetns(const std::string& nsPath, Fn fn) {
  Result r;
  std::thread t([&] {
    if (!nsPath.empty()) {
      int ns = open(nsPath.c_str(), O_RDONLY | O_CLOEXEC);
      if (ns < 0) { r.err = errno; r.syscall = "open(netns)"; return; }
      int rc = setns(ns, CLONE_NEWNET);
      int e = errno;
      close(ns);
      if (rc != 0) { r.err = e; r.syscall = "setns(CLONE_NEWNET)"; return; }
    }
    fn(r);
  });
  t.join();
  return r;
}

std::string OptString(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined()) return "";
  return info[i].As<Napi::String>();
}

// netlinkOpen(protocol, netnsPath?, groups?) -> fd: a blocking,
// close-on-exec AF_NETLINK socket bound to an automatic port id, with
// extended acks on (error messages from the kernel), in the given network
// namespace; `groups` (RTMGRP_* bits) subscribes it to change notifications.
Napi::Value NetlinkOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int proto = info[0].As<Napi::Number>().Int32Value();
  uint32_t groups = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Uint32Value() : 0;
  Result r = InNetns(OptString(info, 1), [proto, groups](Result& r) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, proto);
    if (fd < 0) { r.err = errno; r.syscall = "socket(AF_NETLINK)"; return; }
    sockaddr_nl sa{};
    sa.nl_family = AF_NETLINK;
    sa.nl_groups = groups;
    if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      r.err = errno; r.syscall = "bind(AF_NETLINK)"; close(fd); return;
    }
    int one = 1;
    setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);  // best effort: older kernels lack it
    // Dumps of a busy namespace can be large: a generous receive buffer.
    int rcv = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    r.fd = fd;
  });
  if (r.err) { SyscallError(env, r.syscall, r.err).ThrowAsJavaScriptException(); return env.Null(); }
  return Napi::Number::New(env, r.fd);
}

// tapCreate(netnsPath | null, name, { vnetHdr, nonBlocking }) -> { fd, name }:
// a tap interface (IFF_TAP | IFF_NO_PI, plus IFF_VNET_HDR when asked so QEMU
// can use checksum/segmentation offloads) created in the namespace. It lives
// while an fd to it is open (not persistent), so a crashed owner leaves none.
Napi::Value TapCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string ns = OptString(info, 0);
  std::string name = info[1].As<Napi::String>();
  bool vnetHdr = false, nonBlocking = false;
  if (info.Length() > 2 && info[2].IsObject()) {
    Napi::Object o = info[2].As<Napi::Object>();
    vnetHdr = o.Has("vnetHdr") && o.Get("vnetHdr").ToBoolean();
    nonBlocking = o.Has("nonBlocking") && o.Get("nonBlocking").ToBoolean();
  }
  if (name.empty() || name.size() >= IFNAMSIZ) {
    Napi::Error::New(env, "tapCreate: interface name must be 1-15 bytes").ThrowAsJavaScriptException();
    return env.Null();
  }
  Result r = InNetns(ns, [&](Result& r) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0));
    if (fd < 0) { r.err = errno; r.syscall = "open(/dev/net/tun)"; return; }
    ifreq ifr{};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnetHdr ? IFF_VNET_HDR : 0);
    std::memcpy(ifr.ifr_name, name.c_str(), name.size());
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) { r.err = errno; r.syscall = "ioctl(TUNSETIFF)"; close(fd); return; }
    r.fd = fd;
    r.name.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
  });
  if (r.err) { SyscallError(env, r.syscall, r.err).ThrowAsJavaScriptException(); return env.Null(); }
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", r.fd);
  o.Set("name", r.name);
  return o;
}

// tcpListenInNetns(netnsPath | null, port, backlog) -> { fd, port }: a
// listening AF_INET stream socket bound to 127.0.0.1:port (0: the kernel
// picks) in the namespace; Node serves it with net.Server.listen({ fd }).
Napi::Value TcpListenInNetns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string ns = OptString(info, 0);
  uint32_t port = info[1].As<Napi::Number>().Uint32Value();
  int backlog = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 128;
  if (port > 65535) {
    Napi::RangeError::New(env, "tcpListenInNetns: port must be 0-65535").ThrowAsJavaScriptException();
    return env.Null();
  }
  uint16_t bound = 0;
  Result r = InNetns(ns, [&](Result& r) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) { r.err = errno; r.syscall = "socket(AF_INET)"; return; }
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) { r.err = errno; r.syscall = "bind(127.0.0.1)"; close(fd); return; }
    if (listen(fd, backlog) != 0) { r.err = errno; r.syscall = "listen"; close(fd); return; }
    socklen_t len = sizeof sa;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) { r.err = errno; r.syscall = "getsockname"; close(fd); return; }
    bound = ntohs(sa.sin_port);
    r.fd = fd;
  });
  if (r.err) { SyscallError(env, r.syscall, r.err).ThrowAsJavaScriptException(); return env.Null(); }
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", r.fd);
  o.Set("port", bound);
  return o;
}

// tcpOriginalDst(fd) -> { address, port } | null: where a connection that
// a nat REDIRECT sent to us was going (getsockopt SO_ORIGINAL_DST, from
// conntrack); null when it was not redirected (ENOENT: dialled directly).
Napi::Value TcpOriginalDst(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  sockaddr_in sa{};
  socklen_t len = sizeof sa;
  if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &sa, &len) != 0) {
    if (errno == ENOENT) return env.Null();
    SyscallError(env, "getsockopt(SO_ORIGINAL_DST)", errno).ThrowAsJavaScriptException();
    return env.Null();
  }
  char text[INET_ADDRSTRLEN] = {0};
  inet_ntop(AF_INET, &sa.sin_addr, text, sizeof text);
  Napi::Object o = Napi::Object::New(env);
  o.Set("address", std::string(text));
  o.Set("port", ntohs(sa.sin_port));
  return o;
}

}  // namespace

void InitNetns(Napi::Env env, Napi::Object exports) {
  exports.Set("netlinkOpen", Napi::Function::New(env, NetlinkOpen));
  exports.Set("tapCreate", Napi::Function::New(env, TapCreate));
  exports.Set("tcpListenInNetns", Napi::Function::New(env, TcpListenInNetns));
  exports.Set("tcpOriginalDst", Napi::Function::New(env, TcpOriginalDst));
}
