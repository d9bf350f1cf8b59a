// tap devices for virtio-net (src/virtio/net/tap.ts): open /dev/net/tun and
// attach it to a tap interface with TUNSETIFF (IFF_TAP | IFF_NO_PI: plain
// Ethernet frames, no packet-info prefix). The fd is non-blocking and
// close-on-exec; reads and writes are plain read(2)/write(2) from Node.
#include <napi.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <cstring>
#include "errors.h"

namespace {

// tapOpen(name) -> { fd, name }: name may be a pattern like "kts%d" (the
// kernel picks the number) or an existing persistent tap.
Napi::Value TapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>();
  if (name.size() >= IFNAMSIZ) {
    Napi::Error::New(env, "tapOpen: interface name longer than 15 bytes").ThrowAsJavaScriptException();
    return env.Null();
  }
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) { SyscallError(env, "open(/dev/net/tun)", errno).ThrowAsJavaScriptException(); return env.Null(); }
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  std::memcpy(ifr.ifr_name, name.c_str(), name.size());
  if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
    int e = errno; close(fd); SyscallError(env, "ioctl(TUNSETIFF)", e).ThrowAsJavaScriptException(); return env.Null();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", fd);
  o.Set("name", std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
  return o;
}

}  // namespace

void InitTap(Napi::Env env, Napi::Object exports) {
  exports.Set("tapOpen", Napi::Function::New(env, TapOpen));
}
