// File-descriptor syscalls: unix sockets that receive fds (SCM_RIGHTS, e.g.
// crun's --console-socket handing over a pty master), terminal window size,
// and close. Blocking waits run on libuv's thread pool (AsyncWorker).
#include <napi.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>
#include <cstring>
#include "errors.h"

namespace {

// unixListen(path) -> fd: a SOCK_STREAM listener bound at path (close-on-exec).
Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    Napi::Error::New(env, "unixListen: path too long").ThrowAsJavaScriptException();
    return env.Null();
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) { SyscallError(env, "socket", errno).ThrowAsJavaScriptException(); return env.Null(); }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int e = errno; close(fd); SyscallError(env, "bind", e).ThrowAsJavaScriptException(); return env.Null();
  }
  if (listen(fd, 4) != 0) {
    int e = errno; close(fd); SyscallError(env, "listen", e).ThrowAsJavaScriptException(); return env.Null();
  }
  return Napi::Number::New(env, fd);
}

// Accepts one connection on a listener and receives one fd sent with
// SCM_RIGHTS; the received fd is made close-on-exec.
class RecvFdWorker : public Napi::AsyncWorker {
 public:
  RecvFdWorker(Napi::Env env, int listenFd)
      : Napi::AsyncWorker(env), listenFd_(listenFd), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int conn = accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) { err_ = errno; syscall_ = "accept4"; return; }
    char data[256];
    iovec iov{data, sizeof(data)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n;
    do { n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) { err_ = errno; syscall_ = "recvmsg"; close(conn); return; }
    close(conn);
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        std::memcpy(&fd_, CMSG_DATA(c), sizeof(int));
        return;
      }
    }
    err_ = EBADMSG; syscall_ = "recvmsg(SCM_RIGHTS)";
  }
  void OnOK() override {
    if (err_ != 0) deferred_.Reject(SyscallError(Env(), syscall_, err_).Value());
    else deferred_.Resolve(Napi::Number::New(Env(), fd_));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  int listenFd_;
  int fd_ = -1;
  int err_ = 0;
  const char* syscall_ = "";
  Napi::Promise::Deferred deferred_;
};

Napi::Value RecvFd(const Napi::CallbackInfo& info) {
  auto* w = new RecvFdWorker(info.Env(), info[0].As<Napi::Number>().Int32Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// setWinsize(fd, rows, cols): TIOCSWINSZ on a terminal (pty master).
Napi::Value SetWinsize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  winsize ws{};
  ws.ws_row = static_cast<unsigned short>(info[1].As<Napi::Number>().Uint32Value());
  ws.ws_col = static_cast<unsigned short>(info[2].As<Napi::Number>().Uint32Value());
  if (ioctl(info[0].As<Napi::Number>().Int32Value(), TIOCSWINSZ, &ws) != 0)
    SyscallError(env, "ioctl(TIOCSWINSZ)", errno).ThrowAsJavaScriptException();
  return env.Undefined();
}

// getWinsize(fd) -> {rows, cols}
Napi::Value GetWinsize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  winsize ws{};
  if (ioctl(info[0].As<Napi::Number>().Int32Value(), TIOCGWINSZ, &ws) != 0) {
    SyscallError(env, "ioctl(TIOCGWINSZ)", errno).ThrowAsJavaScriptException();
    return env.Null();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("rows", ws.ws_row);
  o.Set("cols", ws.ws_col);
  return o;
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (close(info[0].As<Napi::Number>().Int32Value()) != 0)
    SyscallError(env, "close", errno).ThrowAsJavaScriptException();
  return env.Undefined();
}

}  // namespace

void InitFd(Napi::Env env, Napi::Object exports) {
  exports.Set("unixListen", Napi::Function::New(env, UnixListen));
  exports.Set("recvFd", Napi::Function::New(env, RecvFd));
  exports.Set("setWinsize", Napi::Function::New(env, SetWinsize));
  exports.Set("getWinsize", Napi::Function::New(env, GetWinsize));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd));
}
