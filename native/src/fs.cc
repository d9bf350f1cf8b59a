// Filesystem syscalls for the virtio-fs passthrough server (src/virtio/fs):
// the *at family over directory fds, so the server walks the shared tree one
// component at a time relative to fds it holds — never by string paths
// (virtiofsd's approach). Syscalls only: which flags to pass, which fd to walk
// from and what is allowed is decided in TypeScript.
//
// Calling convention, chosen for the hot path: every function is synchronous,
// returns >= 0 on success and -errno on failure (no exceptions, no
// allocations on the error path). Names are Buffers (guest names are bytes,
// not necessarily UTF-8); `null` means "" (use with AT_EMPTY_PATH).
// Creating calls take (uid, gid) and run with that fsuid/fsgid so new inodes
// are owned by the guest caller and setgid directories behave as the kernel
// defines; fsuid/fsgid are per-thread on Linux (the raw syscalls, not the
// process-wide setuid broadcast) and are restored before returning.
#include <napi.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

namespace {

// A NUL-terminated copy of a name argument ("" for null/undefined).
std::string Name(const Napi::Value& v) {
  if (!v.IsBuffer()) return std::string();
  auto b = v.As<Napi::Buffer<char>>();
  return std::string(b.Data(), b.Length());
}

int32_t I32(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().Int32Value(); }
uint32_t U32(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().Uint32Value(); }
int64_t I64(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().Int64Value(); }

Napi::Value Ret(Napi::Env env, long r) { return Napi::Number::New(env, r < 0 ? -errno : r); }

// Runs fn with fsuid/fsgid = (uid, gid) when uid >= 0; restores the previous
// ids afterwards (setfsuid returns the previous value).
template <typename F>
long AsCaller(int64_t uid, int64_t gid, F fn) {
  if (uid < 0) return fn();
  int oldGid = setfsgid(static_cast<gid_t>(gid));
  int oldUid = setfsuid(static_cast<uid_t>(uid));
  long r = fn();
  int e = errno;
  setfsuid(oldUid);
  setfsgid(oldGid);
  errno = e;
  return r;
}

// fsOpenat(dirfd, name, flags, mode, uid, gid) -> fd
Napi::Value Openat(const Napi::CallbackInfo& info) {
  std::string n = Name(info[1]);
  int dirfd = I32(info, 0), flags = I32(info, 2);
  mode_t mode = U32(info, 3);
  long r = AsCaller(I64(info, 4), I64(info, 5), [&] { return static_cast<long>(openat(dirfd, n.c_str(), flags | O_CLOEXEC, mode)); });
  return Ret(info.Env(), r);
}

// fsFstatat(dirfd, name, flags, out: BigUint64Array(16)) -> 0
// out = dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks,
//       atime, atime_nsec, mtime, mtime_nsec, ctime, ctime_nsec
Napi::Value Fstatat(const Napi::CallbackInfo& info) {
  std::string n = Name(info[1]);
  struct stat st;
  if (fstatat(I32(info, 0), n.c_str(), &st, I32(info, 2)) != 0) return Ret(info.Env(), -1);
  auto arr = info[3].As<Napi::BigUint64Array>();
  if (arr.ElementLength() < 16) return Napi::Number::New(info.Env(), -EINVAL);
  uint64_t* o = arr.Data();
  o[0] = st.st_dev; o[1] = st.st_ino; o[2] = st.st_mode; o[3] = st.st_nlink;
  o[4] = st.st_uid; o[5] = st.st_gid; o[6] = st.st_rdev; o[7] = static_cast<uint64_t>(st.st_size);
  o[8] = static_cast<uint64_t>(st.st_blksize); o[9] = static_cast<uint64_t>(st.st_blocks);
  o[10] = static_cast<uint64_t>(st.st_atim.tv_sec); o[11] = static_cast<uint64_t>(st.st_atim.tv_nsec);
  o[12] = static_cast<uint64_t>(st.st_mtim.tv_sec); o[13] = static_cast<uint64_t>(st.st_mtim.tv_nsec);
  o[14] = static_cast<uint64_t>(st.st_ctim.tv_sec); o[15] = static_cast<uint64_t>(st.st_ctim.tv_nsec);
  return Napi::Number::New(info.Env(), 0);
}

// fsMkdirat(dirfd, name, mode, uid, gid)
Napi::Value Mkdirat(const Napi::CallbackInfo& info) {
  std::string n = Name(info[1]);
  int dirfd = I32(info, 0);
  mode_t mode = U32(info, 2);
  return Ret(info.Env(), AsCaller(I64(info, 3), I64(info, 4), [&] { return static_cast<long>(mkdirat(dirfd, n.c_str(), mode)); }));
}

// fsMknodat(dirfd, name, mode, rdev, uid, gid)
Napi::Value Mknodat(const Napi::CallbackInfo& info) {
  std::string n = Name(info[1]);
  int dirfd = I32(info, 0);
  mode_t mode = U32(info, 2);
  dev_t rdev = U32(info, 3);
  return Ret(info.Env(), AsCaller(I64(info, 4), I64(info, 5), [&] { return static_cast<long>(mknodat(dirfd, n.c_str(), mode, rdev)); }));
}

// fsSymlinkat(target, dirfd, name, uid, gid)
Napi::Value Symlinkat(const Napi::CallbackInfo& info) {
  std::string t = Name(info[0]), n = Name(info[2]);
  int dirfd = I32(info, 1);
  return Ret(info.Env(), AsCaller(I64(info, 3), I64(info, 4), [&] { return static_cast<long>(symlinkat(t.c_str(), dirfd, n.c_str())); }));
}

// fsUnlinkat(dirfd, name, flags)
Napi::Value Unlinkat(const Napi::CallbackInfo& info) {
  std::string n = Name(info[1]);
  return Ret(info.Env(), unlinkat(I32(info, 0), n.c_str(), I32(info, 2)));
}

// fsRenameat2(olddirfd, oldname, newdirfd, newname, flags)
Napi::Value Renameat2(const Napi::CallbackInfo& info) {
  std::string o = Name(info[1]), n = Name(info[3]);
  return Ret(info.Env(), syscall(SYS_renameat2, I32(info, 0), o.c_str(), I32(info, 2), n.c_str(), U32(info, 4)));
}

// fsLinkat(olddirfd, oldname, newdirfd, newname, flags)
Napi::Value Linkat(const Napi::CallbackInfo& info) {
  std::string o = Name(info[1]), n = Name(info[3]);
  return Ret(info.Env(), linkat(I32(info, 0), o.c_str(), I32(info, 2), n.c_str(), I32(info, 4)));
}

// fsReadlinkat(dirfd, name) -> Buffer | -errno
Napi::Value Readlinkat(const Napi::CallbackInfo& info) {
  std::string n = Name(info[1]);
  std::vector<char> buf(PATH_MAX);
  ssize_t r = readlinkat(I32(info, 0), n.c_str(), buf.data(), buf.size());
  if (r < 0) return Ret(info.Env(), -1);
  return Napi::Buffer<char>::Copy(info.Env(), buf.data(), static_cast<size_t>(r));
}

// fsFchownat(dirfd, name, uid, gid, flags); uid/gid -1 = unchanged
Napi::Value Fchownat(const Napi::CallbackInfo& info) {
  std::string n = Name(info[1]);
  return Ret(info.Env(), fchownat(I32(info, 0), n.c_str(), static_cast<uid_t>(I64(info, 2)), static_cast<gid_t>(I64(info, 3)), I32(info, 4)));
}

// fsFchmodat(dirfd, name, mode) — follows the final link (use a procfs fd name)
Napi::Value Fchmodat(const Napi::CallbackInfo& info) {
  std::string n = Name(info[1]);
  return Ret(info.Env(), fchmodat(I32(info, 0), n.c_str(), U32(info, 2), 0));
}

// fsUtimensat(dirfd, name, atimeSec, atimeNsec, mtimeSec, mtimeNsec, flags)
// nsec may be UTIME_NOW / UTIME_OMIT.
Napi::Value Utimensat(const Napi::CallbackInfo& info) {
  std::string n = Name(info[1]);
  timespec ts[2];
  ts[0].tv_sec = I64(info, 2); ts[0].tv_nsec = I64(info, 3);
  ts[1].tv_sec = I64(info, 4); ts[1].tv_nsec = I64(info, 5);
  int dirfd = I32(info, 0), flags = I32(info, 6);
  // An empty name means "this fd" (futimens); utimensat(fd, "") is EINVAL/ENOENT.
  return Ret(info.Env(), n.empty() ? futimens(dirfd, ts) : utimensat(dirfd, n.c_str(), ts, flags));
}

// fsFtruncate(fd, size)
Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  return Ret(info.Env(), ftruncate(I32(info, 0), I64(info, 1)));
}

// fsFallocate(fd, mode, offset, length)
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  return Ret(info.Env(), fallocate(I32(info, 0), I32(info, 1), I64(info, 2), I64(info, 3)));
}

// fsLseek(fd, offset, whence) -> offset (Number; files here stay < 2^53)
Napi::Value Lseek(const Napi::CallbackInfo& info) {
  off_t r = lseek(I32(info, 0), I64(info, 1), I32(info, 2));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : static_cast<double>(r));
}

// fsFsync(fd, datasync)
Napi::Value Fsync(const Napi::CallbackInfo& info) {
  int fd = I32(info, 0);
  return Ret(info.Env(), info[1].ToBoolean() ? fdatasync(fd) : fsync(fd));
}

// fsFstatfs(fd, out: BigUint64Array(8)) -> 0
// out = blocks, bfree, bavail, files, ffree, bsize, namelen, frsize
Napi::Value Fstatfs(const Napi::CallbackInfo& info) {
  struct statfs s;
  if (fstatfs(I32(info, 0), &s) != 0) return Ret(info.Env(), -1);
  auto arr = info[1].As<Napi::BigUint64Array>();
  if (arr.ElementLength() < 8) return Napi::Number::New(info.Env(), -EINVAL);
  uint64_t* o = arr.Data();
  o[0] = s.f_blocks; o[1] = s.f_bfree; o[2] = s.f_bavail; o[3] = s.f_files; o[4] = s.f_ffree;
  o[5] = static_cast<uint64_t>(s.f_bsize); o[6] = static_cast<uint64_t>(s.f_namelen); o[7] = static_cast<uint64_t>(s.f_frsize);
  return Napi::Number::New(info.Env(), 0);
}

// fsGetdents(fd, offset: BigInt, out: Buffer) -> bytes of linux_dirent64
// records in out, read after seeking the directory to `offset` (a d_off
// cookie from an earlier call, or 0). The caller parses the records.
Napi::Value Getdents(const Napi::CallbackInfo& info) {
  int fd = I32(info, 0);
  bool lossless;
  int64_t off = info[1].As<Napi::BigInt>().Int64Value(&lossless);
  auto out = info[2].As<Napi::Buffer<char>>();
  if (lseek(fd, off, SEEK_SET) < 0) return Ret(info.Env(), -1);
  return Ret(info.Env(), syscall(SYS_getdents64, fd, out.Data(), out.Length()));
}

// xattrs by path: the server passes "/proc/self/fd/N" for an inode it holds
// (O_PATH fds do not support f*xattr). follow=false uses the l* variants.
// fsGetxattr(path, name, out|null, follow) -> size
Napi::Value Getxattr(const Napi::CallbackInfo& info) {
  std::string p = info[0].As<Napi::String>(), n = Name(info[1]);
  void* data = nullptr; size_t len = 0;
  if (info[2].IsBuffer()) { auto b = info[2].As<Napi::Buffer<char>>(); data = b.Data(); len = b.Length(); }
  ssize_t r = info[3].ToBoolean() ? getxattr(p.c_str(), n.c_str(), data, len) : lgetxattr(p.c_str(), n.c_str(), data, len);
  return Ret(info.Env(), r);
}

// fsSetxattr(path, name, value, flags, follow)
Napi::Value Setxattr(const Napi::CallbackInfo& info) {
  std::string p = info[0].As<Napi::String>(), n = Name(info[1]);
  auto v = info[2].As<Napi::Buffer<char>>();
  int flags = I32(info, 3);
  int r = info[4].ToBoolean() ? setxattr(p.c_str(), n.c_str(), v.Data(), v.Length(), flags)
                              : lsetxattr(p.c_str(), n.c_str(), v.Data(), v.Length(), flags);
  return Ret(info.Env(), r);
}

// fsListxattr(path, out|null, follow) -> size
Napi::Value Listxattr(const Napi::CallbackInfo& info) {
  std::string p = info[0].As<Napi::String>();
  char* data = nullptr; size_t len = 0;
  if (info[1].IsBuffer()) { auto b = info[1].As<Napi::Buffer<char>>(); data = b.Data(); len = b.Length(); }
  ssize_t r = info[2].ToBoolean() ? listxattr(p.c_str(), data, len) : llistxattr(p.c_str(), data, len);
  return Ret(info.Env(), r);
}

// fsRemovexattr(path, name, follow)
Napi::Value Removexattr(const Napi::CallbackInfo& info) {
  std::string p = info[0].As<Napi::String>(), n = Name(info[1]);
  return Ret(info.Env(), info[2].ToBoolean() ? removexattr(p.c_str(), n.c_str()) : lremovexattr(p.c_str(), n.c_str()));
}

// fsClose(fd)
Napi::Value Close(const Napi::CallbackInfo& info) {
  return Ret(info.Env(), close(I32(info, 0)));
}

}  // namespace

void InitFs(Napi::Env env, Napi::Object exports) {
  exports.Set("fsOpenat", Napi::Function::New(env, Openat));
  exports.Set("fsFstatat", Napi::Function::New(env, Fstatat));
  exports.Set("fsMkdirat", Napi::Function::New(env, Mkdirat));
  exports.Set("fsMknodat", Napi::Function::New(env, Mknodat));
  exports.Set("fsSymlinkat", Napi::Function::New(env, Symlinkat));
  exports.Set("fsUnlinkat", Napi::Function::New(env, Unlinkat));
  exports.Set("fsRenameat2", Napi::Function::New(env, Renameat2));
  exports.Set("fsLinkat", Napi::Function::New(env, Linkat));
  exports.Set("fsReadlinkat", Napi::Function::New(env, Readlinkat));
  exports.Set("fsFchownat", Napi::Function::New(env, Fchownat));
  exports.Set("fsFchmodat", Napi::Function::New(env, Fchmodat));
  exports.Set("fsUtimensat", Napi::Function::New(env, Utimensat));
  exports.Set("fsFtruncate", Napi::Function::New(env, Ftruncate));
  exports.Set("fsFallocate", Napi::Function::New(env, Fallocate));
  exports.Set("fsLseek", Napi::Function::New(env, Lseek));
  exports.Set("fsFsync", Napi::Function::New(env, Fsync));
  exports.Set("fsFstatfs", Napi::Function::New(env, Fstatfs));
  exports.Set("fsGetdents", Napi::Function::New(env, Getdents));
  exports.Set("fsGetxattr", Napi::Function::New(env, Getxattr));
  exports.Set("fsSetxattr", Napi::Function::New(env, Setxattr));
  exports.Set("fsListxattr", Napi::Function::New(env, Listxattr));
  exports.Set("fsRemovexattr", Napi::Function::New(env, Removexattr));
  exports.Set("fsClose", Napi::Function::New(env, Close));
}
