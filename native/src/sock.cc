// Socket and event syscalls for device backends (vhost-user, vsock):
// eventfds (vhost-user kick/call), sendmsg/recvmsg with SCM_RIGHTS on
// connected AF_UNIX sockets (vhost-user SET_MEM_TABLE/SET_VRING_* fds),
// non-blocking accept/read/write, AF_VSOCK listen/connect (the guest agent:
// Node has no AF_VSOCK), and readiness watching of raw fds on Node's own
// libuv loop (uv_poll) — so everything stays on the event loop, no threads.
// Every fd this file creates is O_NONBLOCK and close-on-exec. Syscalls only;
// EAGAIN is returned as -1 (a value, not an exception) since it is the
// normal way a non-blocking call says "later".
#include <napi.h>
#include <uv.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <linux/vm_sockets.h>
#include <unistd.h>
#include <cstring>
#include <map>
#include <memory>
#include <vector>
#include "errors.h"

namespace {

constexpr int kMaxFds = 16;

int Fd(const Napi::Value& v) { return v.As<Napi::Number>().Int32Value(); }

Napi::Value Throw(Napi::Env env, const char* sc, int e) {
  SyscallError(env, sc, e).ThrowAsJavaScriptException();
  return env.Null();
}

// eventfdCreate(initial=0) -> fd (EFD_NONBLOCK|EFD_CLOEXEC)
Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  unsigned init = info.Length() > 0 ? info[0].As<Napi::Number>().Uint32Value() : 0;
  int fd = eventfd(init, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return Throw(info.Env(), "eventfd", errno);
  return Napi::Number::New(info.Env(), fd);
}

// eventfdRead(fd) -> counter (number) or -1 when nothing is pending.
Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  uint64_t v = 0;
  ssize_t n;
  do { n = read(Fd(info[0]), &v, sizeof v); } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(info.Env(), -1);
    return Throw(info.Env(), "read(eventfd)", errno);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(v));
}

// eventfdWrite(fd, value=1). EAGAIN (counter saturated) means the other side
// is already signalled, so it is not an error.
Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  uint64_t v = info.Length() > 1 ? static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value()) : 1;
  ssize_t n;
  do { n = write(Fd(info[0]), &v, sizeof v); } while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN) return Throw(info.Env(), "write(eventfd)", errno);
  return info.Env().Undefined();
}

// recvMsg(fd, buffer, offset, length) -> {bytes, fds}; bytes -1 on EAGAIN, 0 at EOF.
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  size_t off = info[2].As<Napi::Number>().Uint32Value();
  size_t len = info[3].As<Napi::Number>().Uint32Value();
  if (off + len > buf.Length()) { Napi::RangeError::New(env, "recvMsg: range").ThrowAsJavaScriptException(); return env.Null(); }
  iovec iov{buf.Data() + off, len};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do { n = recvmsg(Fd(info[0]), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT); } while (n < 0 && errno == EINTR);
  Napi::Object o = Napi::Object::New(env);
  Napi::Array fds = Napi::Array::New(env);
  if (n < 0) {
    if (errno != EAGAIN) return Throw(env, "recvmsg", errno);
    n = -1;
  }
  uint32_t k = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); n >= 0 && c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < cnt; i++) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.Set(k++, Napi::Number::New(env, fd));
    }
  }
  // A truncated control message means fds were dropped by the kernel; say so
  // rather than silently running with fewer fds than the peer sent.
  if (n >= 0 && (msg.msg_flags & MSG_CTRUNC)) o.Set("truncated", Napi::Boolean::New(env, true));
  o.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  o.Set("fds", fds);
  return o;
}

// sendMsg(fd, buffer, fds=[]) -> bytes sent, or -1 on EAGAIN.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  std::vector<int> fds;
  if (info.Length() > 2 && info[2].IsArray()) {
    Napi::Array a = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length() && i < kMaxFds; i++) fds.push_back(a.Get(i).As<Napi::Number>().Int32Value());
  }
  iovec iov{buf.Data(), buf.Length()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do { n = sendmsg(Fd(info[0]), &msg, MSG_NOSIGNAL | MSG_DONTWAIT); } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    return Throw(env, "sendmsg", errno);
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// readFd(fd, buffer, offset, length) -> bytes, 0 at EOF, -1 on EAGAIN.
Napi::Value ReadFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  size_t off = info[2].As<Napi::Number>().Uint32Value();
  size_t len = info[3].As<Napi::Number>().Uint32Value();
  if (off + len > buf.Length()) { Napi::RangeError::New(env, "readFd: range").ThrowAsJavaScriptException(); return env.Null(); }
  ssize_t n;
  do { n = read(Fd(info[0]), buf.Data() + off, len); } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    return Throw(env, "read", errno);
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// writeFd(fd, buffer, offset, length) -> bytes, -1 on EAGAIN. No SIGPIPE.
Napi::Value WriteFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  size_t off = info[2].As<Napi::Number>().Uint32Value();
  size_t len = info[3].As<Napi::Number>().Uint32Value();
  if (off + len > buf.Length()) { Napi::RangeError::New(env, "writeFd: range").ThrowAsJavaScriptException(); return env.Null(); }
  ssize_t n;
  // send() so a closed peer gives EPIPE instead of killing the process.
  do { n = send(Fd(info[0]), buf.Data() + off, len, MSG_NOSIGNAL | MSG_DONTWAIT); } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == ENOTSOCK) {
    do { n = write(Fd(info[0]), buf.Data() + off, len); } while (n < 0 && errno == EINTR);
  }
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    return Throw(env, "write", errno);
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// shutdownFd(fd, how) — how: 0 RD, 1 WR, 2 RDWR. ENOTCONN is ignored.
Napi::Value ShutdownFd(const Napi::CallbackInfo& info) {
  if (shutdown(Fd(info[0]), info[1].As<Napi::Number>().Int32Value()) != 0 && errno != ENOTCONN)
    return Throw(info.Env(), "shutdown", errno);
  return info.Env().Undefined();
}

// acceptNb(listenFd) -> fd (non-blocking, cloexec) or -1 on EAGAIN.
Napi::Value AcceptNb(const Napi::CallbackInfo& info) {
  int fd;
  do { fd = accept4(Fd(info[0]), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC); } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == EAGAIN || errno == ECONNABORTED) return Napi::Number::New(info.Env(), -1);
    return Throw(info.Env(), "accept4", errno);
  }
  return Napi::Number::New(info.Env(), fd);
}

// unixListenNb(path, backlog) -> fd: a non-blocking AF_UNIX stream listener.
Napi::Value UnixListenNb(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  int backlog = info.Length() > 1 ? info[1].As<Napi::Number>().Int32Value() : 16;
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) { Napi::Error::New(env, "unixListenNb: path too long").ThrowAsJavaScriptException(); return env.Null(); }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Throw(env, "socket", errno);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, backlog) != 0) {
    int e = errno; close(fd); return Throw(env, "bind/listen", e);
  }
  return Napi::Number::New(env, fd);
}

// unixConnect(path) -> fd (blocking connect, then non-blocking).
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) { Napi::Error::New(env, "unixConnect: path too long").ThrowAsJavaScriptException(); return env.Null(); }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Throw(env, "socket", errno);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) { int e = errno; close(fd); return Throw(env, "connect", e); }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return Napi::Number::New(env, fd);
}

// vsockListen(port, backlog) -> fd: AF_VSOCK stream listener on VMADDR_CID_ANY.
Napi::Value VsockListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Throw(env, "socket(AF_VSOCK)", errno);
  sockaddr_vm addr{};
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = VMADDR_CID_ANY;
  addr.svm_port = info[0].As<Napi::Number>().Uint32Value();
  int backlog = info.Length() > 1 ? info[1].As<Napi::Number>().Int32Value() : 64;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, backlog) != 0) {
    int e = errno; close(fd); return Throw(env, "bind/listen(AF_VSOCK)", e);
  }
  return Napi::Number::New(env, fd);
}

// vsockConnect(cid, port) -> fd (blocking connect, then non-blocking).
Napi::Value VsockConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Throw(env, "socket(AF_VSOCK)", errno);
  sockaddr_vm addr{};
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = info[0].As<Napi::Number>().Uint32Value();
  addr.svm_port = info[1].As<Napi::Number>().Uint32Value();
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) { int e = errno; close(fd); return Throw(env, "connect(AF_VSOCK)", e); }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return Napi::Number::New(env, fd);
}

// vsockSetBufferSize(fd, bytes) -> the socket's buffer size now, or -errno.
// An AF_VSOCK socket's buffer (SO_VM_SOCKETS_BUFFER_SIZE, 256 KiB by
// default and at most, unless SO_VM_SOCKETS_BUFFER_MAX_SIZE is raised
// first) is both the receive window it advertises (buf_alloc) and, since
// Linux caps the peer's window with it, how much it may send before the
// peer's credit update comes back. Set on a listener, accepted sockets
// inherit it.
Napi::Value VsockSetBufferSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint64_t want = static_cast<uint64_t>(info[1].As<Napi::Number>().DoubleValue());
  if (setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_BUFFER_MAX_SIZE, &want, sizeof want) != 0 ||
      setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_BUFFER_SIZE, &want, sizeof want) != 0) {
    return Napi::Number::New(env, -errno);
  }
  uint64_t now = 0;
  socklen_t len = sizeof now;
  if (getsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_BUFFER_SIZE, &now, &len) != 0) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, static_cast<double>(now));
}

// ---- readiness watching on the Node loop (uv_poll) -------------------------
// pollStart(fd, events, cb) -> id; cb(events) runs on the loop thread when the
// fd is ready (1 readable, 2 writable, 4 hang-up/error). pollUpdate(id,
// events) changes the interest set; pollStop(id) stops and frees the watcher
// (the fd is the caller's to close, after stopping).
struct Watcher {
  uv_poll_t poll;
  Napi::FunctionReference cb;
  std::unique_ptr<Napi::AsyncContext> ctx;
  napi_env env;
  uint32_t id;
  bool unref;
};
std::map<uint32_t, Watcher*> watchers;
uint32_t nextId = 1;

int UvEvents(int ev) {
  return ((ev & 1) ? UV_READABLE : 0) | ((ev & 2) ? UV_WRITABLE : 0) | UV_DISCONNECT;
}

void OnPoll(uv_poll_t* h, int status, int events) {
  Watcher* w = static_cast<Watcher*>(h->data);
  Napi::Env env(w->env);
  Napi::HandleScope scope(env);
  int ev = (status < 0 ? 4 : 0) | ((events & UV_READABLE) ? 1 : 0) | ((events & UV_WRITABLE) ? 2 : 0) | ((events & UV_DISCONNECT) ? 4 : 0);
  w->cb.MakeCallback(env.Global(), {Napi::Number::New(env, ev)}, *w->ctx);
  // MakeCallback surfaces a throw as an uncaught exception (process
  // 'uncaughtException'), like any other I/O callback; nothing to do here.
}

Napi::Value PollStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) { Napi::Error::New(env, "no uv loop").ThrowAsJavaScriptException(); return env.Null(); }
  auto* w = new Watcher();
  w->env = env;
  w->cb = Napi::Persistent(info[2].As<Napi::Function>());
  w->ctx = std::make_unique<Napi::AsyncContext>(env, "kata_native.poll");
  w->id = nextId++;
  w->unref = info.Length() > 3 && info[3].ToBoolean().Value();
  int r = uv_poll_init(loop, &w->poll, Fd(info[0]));
  if (r != 0) { delete w; Napi::Error::New(env, std::string("uv_poll_init: ") + uv_strerror(r)).ThrowAsJavaScriptException(); return env.Null(); }
  w->poll.data = w;
  r = uv_poll_start(&w->poll, UvEvents(info[1].As<Napi::Number>().Int32Value()), OnPoll);
  if (r != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), [](uv_handle_t* h) { delete static_cast<Watcher*>(h->data); });
    Napi::Error::New(env, std::string("uv_poll_start: ") + uv_strerror(r)).ThrowAsJavaScriptException();
    return env.Null();
  }
  // A watcher that should not keep the process alive (e.g. an idle device).
  if (w->unref) uv_unref(reinterpret_cast<uv_handle_t*>(&w->poll));
  watchers[w->id] = w;
  return Napi::Number::New(env, w->id);
}

Napi::Value PollUpdate(const Napi::CallbackInfo& info) {
  auto it = watchers.find(info[0].As<Napi::Number>().Uint32Value());
  if (it == watchers.end()) return info.Env().Undefined();
  int ev = info[1].As<Napi::Number>().Int32Value();
  if (ev == 0) uv_poll_stop(&it->second->poll);
  else uv_poll_start(&it->second->poll, UvEvents(ev), OnPoll);
  return info.Env().Undefined();
}

Napi::Value PollStop(const Napi::CallbackInfo& info) {
  auto it = watchers.find(info[0].As<Napi::Number>().Uint32Value());
  if (it == watchers.end()) return info.Env().Undefined();
  Watcher* w = it->second;
  watchers.erase(it);
  uv_poll_stop(&w->poll);
  uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), [](uv_handle_t* h) { delete static_cast<Watcher*>(h->data); });
  return info.Env().Undefined();
}

}  // namespace

void InitSock(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfdCreate", Napi::Function::New(env, EventfdCreate));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg));
  exports.Set("readFd", Napi::Function::New(env, ReadFd));
  exports.Set("writeFd", Napi::Function::New(env, WriteFd));
  exports.Set("shutdownFd", Napi::Function::New(env, ShutdownFd));
  exports.Set("acceptNb", Napi::Function::New(env, AcceptNb));
  exports.Set("unixListenNb", Napi::Function::New(env, UnixListenNb));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect));
  exports.Set("vsockListen", Napi::Function::New(env, VsockListen));
  exports.Set("vsockConnect", Napi::Function::New(env, VsockConnect));
  exports.Set("vsockSetBufferSize", Napi::Function::New(env, VsockSetBufferSize));
  exports.Set("pollStart", Napi::Function::New(env, PollStart));
  exports.Set("pollUpdate", Napi::Function::New(env, PollUpdate));
  exports.Set("pollStop", Napi::Function::New(env, PollStop));
}
