// Guest agent, direct-assigned volumes (src/agent/volumes.ts): grow a
// mounted ext4 filesystem online to fill its (just enlarged) block device,
// the EXT4_IOC_RESIZE_FS ioctl resize2fs uses for an online grow
// (Documentation/filesystems/ext4 "online resize"; fs/ext4/ioctl.c). Doing it
// here keeps e2fsprogs out of the guest image. Needs CAP_SYS_RESOURCE: the
// agent is root.
#include <napi.h>
#include <cerrno>
#include <cstdint>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/types.h>
#include "errors.h"

#ifndef EXT4_IOC_RESIZE_FS
#define EXT4_IOC_RESIZE_FS _IOW('f', 16, __u64)
#endif

namespace {

// ext4ResizeFs(mountPoint, newBlockCount) -> 0 (throws on error). The count
// is in filesystem blocks; the kernel refuses a shrink (EINVAL) and a size
// beyond the device.
Napi::Value Ext4ResizeFs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string mp = info[0].As<Napi::String>();
  double blocks = info[1].As<Napi::Number>().DoubleValue();
  if (!(blocks > 0) || blocks > 9007199254740991.0) {
    Napi::RangeError::New(env, "ext4ResizeFs: block count out of range").ThrowAsJavaScriptException();
    return env.Null();
  }
  int fd = open(mp.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    SyscallError(env, "open", errno).ThrowAsJavaScriptException();
    return env.Null();
  }
  __u64 n = static_cast<__u64>(blocks);
  int r = ioctl(fd, EXT4_IOC_RESIZE_FS, &n);
  int e = errno;
  close(fd);
  if (r != 0) {
    SyscallError(env, "ioctl(EXT4_IOC_RESIZE_FS)", e).ThrowAsJavaScriptException();
    return env.Null();
  }
  return Napi::Number::New(env, 0);
}

}  // namespace

void InitExt4Resize(Napi::Env env, Napi::Object exports) {
  exports.Set("ext4ResizeFs", Napi::Function::New(env, Ext4ResizeFs));
}
