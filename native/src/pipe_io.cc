// Guest agent, container output (src/agent/output.ts): pipe capacity, how
// much a pipe holds, and splice(2) from a pipe into a socket. Under TCG the
// agent's JavaScript per pipe read was the cost of container stdout (README
// performance, agent stdout): a 1 MiB pipe (F_SETPIPE_SZ, up to
// /proc/sys/fs/pipe-max-size) lets one read take what a writer wrote in one
// go, and splice moves the bytes into the vsock socket in the kernel with no
// JavaScript and no user-space copy per chunk. Non-blocking throughout.
#include <napi.h>
#include <cerrno>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "errors.h"

namespace {

int Fd(const Napi::Value& v) { return v.As<Napi::Number>().Int32Value(); }

// setPipeSize(fd, bytes) -> the capacity now (the kernel rounds up to a
// power-of-two number of pages), or -errno (EPERM above pipe-max-size for
// an unprivileged caller, EBUSY below what the pipe holds).
Napi::Value SetPipeSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int r = fcntl(Fd(info[0]), F_SETPIPE_SZ, info[1].As<Napi::Number>().Int32Value());
  return Napi::Number::New(env, r < 0 ? -errno : r);
}

// pipeAvailable(fd) -> bytes waiting to be read (FIONREAD), or -errno.
Napi::Value PipeAvailable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int n = 0;
  if (ioctl(Fd(info[0]), FIONREAD, &n) != 0) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, n);
}

// spliceFd(fromFd, toFd, length) -> bytes moved (> 0), 0 at end of the
// input, -1 when either side would block (EAGAIN). Errors throw (EPIPE
// when the socket's peer is gone: Node ignores SIGPIPE).
Napi::Value SpliceFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t len = info[2].As<Napi::Number>().Uint32Value();
  ssize_t n;
  do { n = splice(Fd(info[0]), nullptr, Fd(info[1]), nullptr, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE); } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    SyscallError(env, "splice", errno).ThrowAsJavaScriptException();
    return env.Null();
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

}  // namespace

void InitPipeIo(Napi::Env env, Napi::Object exports) {
  exports.Set("setPipeSize", Napi::Function::New(env, SetPipeSize));
  exports.Set("pipeAvailable", Napi::Function::New(env, PipeAvailable));
  exports.Set("spliceFd", Napi::Function::New(env, SpliceFd));
}
