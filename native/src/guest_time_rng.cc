// Guest-side syscalls for a VM template clone (src/agent/identity.ts): set
// the wall clock (clock_settime CLOCK_REALTIME) and credit host randomness
// to the kernel RNG (ioctl RNDADDENTROPY on /dev/random; random(4)). Node
// has neither. Both need CAP_SYS_TIME / CAP_SYS_ADMIN: the agent is root.
#include <napi.h>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <vector>
#include "errors.h"

namespace {

// clockSetRealtime(sec, nsec) -> 0 (throws on error)
Napi::Value ClockSetRealtime(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct timespec ts;
  ts.tv_sec = static_cast<time_t>(info[0].As<Napi::Number>().Int64Value());
  ts.tv_nsec = static_cast<long>(info[1].As<Napi::Number>().Int64Value());
  if (ts.tv_nsec < 0 || ts.tv_nsec >= 1000000000L) {
    Napi::RangeError::New(env, "clockSetRealtime: nsec out of range").ThrowAsJavaScriptException();
    return env.Null();
  }
  if (clock_settime(CLOCK_REALTIME, &ts) != 0) {
    SyscallError(env, "clock_settime", errno).ThrowAsJavaScriptException();
    return env.Null();
  }
  return Napi::Number::New(env, 0);
}

// addEntropy(buf) -> bits credited (throws on error): RNDADDENTROPY with
// 8 bits per byte, as Kata's agent credits the runtime's seed.
Napi::Value AddEntropy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBuffer()) {
    Napi::TypeError::New(env, "addEntropy: a Buffer is required").ThrowAsJavaScriptException();
    return env.Null();
  }
  auto buf = info[0].As<Napi::Buffer<uint8_t>>();
  if (buf.Length() == 0 || buf.Length() > 4096) {
    Napi::RangeError::New(env, "addEntropy: 1..4096 bytes").ThrowAsJavaScriptException();
    return env.Null();
  }
  std::vector<uint8_t> req(sizeof(struct rand_pool_info) + buf.Length());
  auto* pool = reinterpret_cast<struct rand_pool_info*>(req.data());
  pool->entropy_count = static_cast<int>(buf.Length() * 8);
  pool->buf_size = static_cast<int>(buf.Length());
  memcpy(pool->buf, buf.Data(), buf.Length());
  int fd = open("/dev/random", O_WRONLY | O_CLOEXEC);
  if (fd < 0) { SyscallError(env, "open /dev/random", errno).ThrowAsJavaScriptException(); return env.Null(); }
  int r = ioctl(fd, RNDADDENTROPY, pool);
  int e = errno;
  close(fd);
  if (r != 0) { SyscallError(env, "ioctl RNDADDENTROPY", e).ThrowAsJavaScriptException(); return env.Null(); }
  return Napi::Number::New(env, static_cast<double>(pool->entropy_count));
}

}  // namespace

void InitGuestTimeRng(Napi::Env env, Napi::Object exports) {
  exports.Set("clockSetRealtime", Napi::Function::New(env, ClockSetRealtime));
  exports.Set("addEntropy", Napi::Function::New(env, AddEntropy));
}
