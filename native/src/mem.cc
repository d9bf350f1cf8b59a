// Guest memory syscalls (ARCHITECTURE.md decision 1): memfd creation, and
// mapping a file (a guest-RAM memfd, ours or one QEMU sent over vhost-user)
// MAP_FIXED|MAP_SHARED over a page-aligned range of a WebAssembly.Memory's
// buffer, so JS views, WASM loads and the other process see the same pages.
// Unmapping puts fresh anonymous zero pages back, because V8 still owns the
// range and a hole there would turn a later access into SIGSEGV.
// Syscalls only: the caller decides where (offsets are checked against the
// buffer here so a bad offset is an exception, never a stray mapping).
#include <napi.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cstdint>
#include "errors.h"

namespace {

constexpr uint64_t kPage = 4096;

// memfdCreate(name, size) -> fd (MFD_CLOEXEC, ftruncated to size).
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>();
  int64_t size = info[1].As<Napi::Number>().Int64Value();
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) { SyscallError(env, "memfd_create", errno).ThrowAsJavaScriptException(); return env.Null(); }
  if (ftruncate(fd, size) != 0) {
    int e = errno; close(fd); SyscallError(env, "ftruncate", e).ThrowAsJavaScriptException(); return env.Null();
  }
  return Napi::Number::New(env, fd);
}

// Resolves [offset, offset+length) of an ArrayBuffer to a page-aligned address.
bool Range(const Napi::CallbackInfo& info, uint8_t** addr, uint64_t* len) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) {
    Napi::TypeError::New(env, "expected the WebAssembly.Memory's ArrayBuffer").ThrowAsJavaScriptException();
    return false;
  }
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  int64_t off = info[1].As<Napi::Number>().Int64Value();
  int64_t n = info[2].As<Napi::Number>().Int64Value();
  uint8_t* base = static_cast<uint8_t*>(ab.Data());
  if (off < 0 || n <= 0 || static_cast<uint64_t>(off) + static_cast<uint64_t>(n) > ab.ByteLength()) {
    Napi::RangeError::New(env, "range outside the buffer").ThrowAsJavaScriptException();
    return false;
  }
  uint8_t* a = base + off;
  if ((reinterpret_cast<uintptr_t>(a) % kPage) != 0 || (static_cast<uint64_t>(n) % kPage) != 0) {
    Napi::RangeError::New(env, "range is not page aligned").ThrowAsJavaScriptException();
    return false;
  }
  *addr = a;
  *len = static_cast<uint64_t>(n);
  return true;
}

// mapFileOver(arrayBuffer, offset, length, fd, fileOffset, readonly?)
Napi::Value MapFileOver(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* addr; uint64_t len;
  if (!Range(info, &addr, &len)) return env.Undefined();
  int fd = info[3].As<Napi::Number>().Int32Value();
  int64_t foff = info[4].As<Napi::Number>().Int64Value();
  bool ro = info.Length() > 5 && info[5].ToBoolean().Value();
  if (foff < 0 || (static_cast<uint64_t>(foff) % kPage) != 0) {
    Napi::RangeError::New(env, "file offset is not page aligned").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  void* p = mmap(addr, len, PROT_READ | (ro ? 0 : PROT_WRITE), MAP_SHARED | MAP_FIXED, fd, foff);
  if (p == MAP_FAILED) SyscallError(env, "mmap", errno).ThrowAsJavaScriptException();
  return env.Undefined();
}

// unmapOver(arrayBuffer, offset, length): anonymous zero pages back in place.
Napi::Value UnmapOver(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* addr; uint64_t len;
  if (!Range(info, &addr, &len)) return env.Undefined();
  void* p = mmap(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (p == MAP_FAILED) SyscallError(env, "mmap(anon)", errno).ThrowAsJavaScriptException();
  return env.Undefined();
}

// fstatId(fd) -> {dev, ino, size}: tells whether two fds name the same file.
Napi::Value FstatId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct stat st{};
  if (fstat(info[0].As<Napi::Number>().Int32Value(), &st) != 0) {
    SyscallError(env, "fstat", errno).ThrowAsJavaScriptException();
    return env.Null();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("dev", Napi::Number::New(env, static_cast<double>(st.st_dev)));
  o.Set("ino", Napi::Number::New(env, static_cast<double>(st.st_ino)));
  o.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  return o;
}

// residentPages(arrayBuffer, offset, length, out Uint8Array) -> resident count.
// mincore(2) over a mapped range: out[i] = 1 when page i is in memory. For a
// shared memfd mapping it reports the file's page cache, so the page scanner
// (src/memory) reads only pages the guest has really touched: reading a hole
// of a shmem mapping would allocate it and grow the VM's footprint.
Napi::Value ResidentPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* addr; uint64_t len;
  if (!Range(info, &addr, &len)) return env.Null();
  if (!info[3].IsTypedArray()) {
    Napi::TypeError::New(env, "expected a Uint8Array for the result").ThrowAsJavaScriptException();
    return env.Null();
  }
  Napi::Uint8Array out = info[3].As<Napi::Uint8Array>();
  uint64_t pages = len / kPage;
  if (out.ElementLength() < pages) {
    Napi::RangeError::New(env, "result array shorter than the page count").ThrowAsJavaScriptException();
    return env.Null();
  }
  uint8_t* vec = out.Data();
  if (mincore(addr, len, vec) != 0) { SyscallError(env, "mincore", errno).ThrowAsJavaScriptException(); return env.Null(); }
  uint64_t n = 0;
  for (uint64_t i = 0; i < pages; i++) { vec[i] &= 1; n += vec[i]; }
  return Napi::Number::New(env, static_cast<double>(n));
}

// mallocTrim() -> 1 when memory went back to the system. glibc's free()
// returns memory to the kernel only from the top of an arena; malloc_trim(0)
// also releases the free pages inside every arena (MADV_DONTNEED). The
// process owning a VM frees most of what it malloc'd while booting it (WASM
// compilation, device setup) and then idles: measured 8.6 MiB of its
// ~24 MiB anonymous memory went back with one call (src/resource/memory/
// process-trim.ts calls it).
Napi::Value MallocTrim(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), malloc_trim(0));
}

// madvise(arrayBuffer, offset, length, advice) over a page-aligned range of a
// WebAssembly.Memory's buffer (the guest RAM area). advice is a name, so the
// caller cannot pass an arbitrary flag: "dontneed" (private anonymous or
// MAP_PRIVATE file pages: the private copy is dropped), "remove" (a shared
// memfd mapping: the pages are punched out of the file, as fallocate
// PUNCH_HOLE), "mergeable"/"unmergeable" (KSM). The virtio-balloon device
// (src/virtio/balloon) gives inflated and reported guest pages back with it;
// the range check in Range() keeps every call inside the buffer.
Napi::Value Madvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* addr; uint64_t len;
  if (!Range(info, &addr, &len)) return env.Undefined();
  std::string name = info[3].As<Napi::String>();
  int advice;
  if (name == "dontneed") advice = MADV_DONTNEED;
  else if (name == "remove") advice = MADV_REMOVE;
  else if (name == "mergeable") advice = MADV_MERGEABLE;
  else if (name == "unmergeable") advice = MADV_UNMERGEABLE;
  else { Napi::TypeError::New(env, "unknown madvise advice " + name).ThrowAsJavaScriptException(); return env.Undefined(); }
  if (madvise(addr, len, advice) != 0) SyscallError(env, "madvise", errno).ThrowAsJavaScriptException();
  return env.Undefined();
}

}  // namespace

void InitMem(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("mapFileOver", Napi::Function::New(env, MapFileOver));
  exports.Set("unmapOver", Napi::Function::New(env, UnmapOver));
  exports.Set("fstatId", Napi::Function::New(env, FstatId));
  exports.Set("residentPages", Napi::Function::New(env, ResidentPages));
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim));
  exports.Set("madvise", Napi::Function::New(env, Madvise));
}
