// Guest agent, container storages (src/agent/storage.ts, mount-options.ts):
// mount(2) and umount2(2) as the agent's own calls. The agent spawned
// busybox's mount/umount for each storage, and under TCG a process start
// from Node costs 60-80 ms warm and ~350 ms the first time in a fresh VM
// (measured in a guest, 2026-12-01): a container on the default image
// mounts twice (EROFS, overlay) inside CreateContainer. Kata's agent calls
// mount(2) itself too. Syscalls only: the option words are turned into
// flags and a data string in TypeScript.
//
// Convention as in fs.cc: synchronous, 0 on success, -errno on failure.
#include <napi.h>
#include <sys/mount.h>
#include <cerrno>
#include <string>

namespace {

// A string argument, or nullptr for null/undefined (mount(2) takes NULL for
// an unused source, fstype or data).
bool Str(const Napi::Value& v, std::string* out) {
  if (!v.IsString()) return false;
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

// mountFs(source|null, target, fstype|null, flags, data|null) -> 0 | -errno
Napi::Value MountFs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string source, target, fstype, data;
  bool hasSource = Str(info[0], &source);
  if (!Str(info[1], &target)) {
    Napi::TypeError::New(env, "mountFs: target must be a string").ThrowAsJavaScriptException();
    return env.Null();
  }
  bool hasType = Str(info[2], &fstype);
  // Flags fit in 32 bits (MS_* up to MS_LAZYTIME = 1<<25).
  unsigned long flags = info[3].As<Napi::Number>().Uint32Value();
  bool hasData = Str(info[4], &data);
  int r = mount(hasSource ? source.c_str() : nullptr, target.c_str(), hasType ? fstype.c_str() : nullptr, flags,
                hasData ? data.c_str() : nullptr);
  return Napi::Number::New(env, r < 0 ? -errno : 0);
}

// umountFs(target, flags) -> 0 | -errno (flags: MNT_DETACH etc.)
Napi::Value UmountFs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string target;
  if (!Str(info[0], &target)) {
    Napi::TypeError::New(env, "umountFs: target must be a string").ThrowAsJavaScriptException();
    return env.Null();
  }
  int r = umount2(target.c_str(), info[1].As<Napi::Number>().Int32Value());
  return Napi::Number::New(env, r < 0 ? -errno : 0);
}

}  // namespace

void InitMount(Napi::Env env, Napi::Object exports) {
  exports.Set("mountFs", Napi::Function::New(env, MountFs));
  exports.Set("umountFs", Napi::Function::New(env, UmountFs));
}
