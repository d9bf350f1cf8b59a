// What a VM snapshot needs from KVM beyond running it (Firecracker's
// snapshot model; api.rst §4): VM-level state blobs (in-kernel PIC master
// and slave, IOAPIC, PIT, kvmclock), the host's MSR index list, and a
// copy-on-write private mapping of a memory file over the guest-RAM range of
// the WebAssembly.Memory. The blobs are KVM's own structs, byte for byte:
// the x86-64 KVM ABI is stable, and src/vmm/snapshot decides what to keep,
// versions and checksums it. vCPU state blobs live in kvm_vcpu.cc.
#include <napi.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>
#include "errors.h"
#include "kvm_abi.h"
#include "kvm_args.h"

using namespace kata;

namespace {

constexpr uint64_t kPage = 4096;
// struct kvm_msr_list is { __u32 nmsrs; __u32 indices[]; }: 4 bytes in C. In
// C++ the flexible array's declaration changes sizeof, and with it the ioctl
// number (kvm_abi.h explains); spell the C one out.
constexpr unsigned long kKvmGetMsrIndexList = _IOWR(KVMIO, 0x02, uint32_t);

int Ioctl(int fd, unsigned long req, void* arg) {
  int rc;
  do { rc = ioctl(fd, req, arg); } while (rc < 0 && errno == EINTR);
  return rc;
}

Napi::Value Throw(Napi::Env env, const std::string& name, int err) {
  SyscallError(env, name.c_str(), err).ThrowAsJavaScriptException();
  return env.Undefined();
}

// The VM-level kinds and their structs. The irqchip kinds share one struct
// and differ by chip_id (0 PIC master, 1 PIC slave, 2 IOAPIC).
struct VmKind { const char* name; size_t size; int chip; };
const VmKind kVmKinds[] = {
  {"pic0", sizeof(kvm_irqchip), KVM_IRQCHIP_PIC_MASTER},
  {"pic1", sizeof(kvm_irqchip), KVM_IRQCHIP_PIC_SLAVE},
  {"ioapic", sizeof(kvm_irqchip), KVM_IRQCHIP_IOAPIC},
  {"pit2", sizeof(kvm_pit_state2), -1},
  {"clock", sizeof(kvm_clock_data), -1},
};

const VmKind* FindVmKind(Napi::Env env, Napi::Value v) { return FindByName(env, v, kVmKinds, "VM state kind"); }

// vmGetState(vmFd, kind) -> Buffer (the KVM struct)
Napi::Value VmGetState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd; if (!ArgFd(info, 0, &fd)) return env.Undefined();
  const VmKind* k = FindVmKind(env, info[1]); if (!k) return env.Undefined();
  std::vector<uint8_t> b(k->size, 0);
  if (k->chip >= 0) {
    auto* c = reinterpret_cast<kvm_irqchip*>(b.data());
    c->chip_id = static_cast<uint32_t>(k->chip);
    if (Ioctl(fd, KVM_GET_IRQCHIP, c) < 0) return Throw(env, "ioctl(KVM_GET_IRQCHIP)", errno);
  } else if (!std::strcmp(k->name, "pit2")) {
    if (Ioctl(fd, KVM_GET_PIT2, b.data()) < 0) return Throw(env, "ioctl(KVM_GET_PIT2)", errno);
  } else {
    if (Ioctl(fd, KVM_GET_CLOCK, b.data()) < 0) return Throw(env, "ioctl(KVM_GET_CLOCK)", errno);
  }
  return Napi::Buffer<uint8_t>::Copy(env, b.data(), b.size());
}

// vmSetState(vmFd, kind, buffer): the buffer must be exactly the struct.
Napi::Value VmSetState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd; if (!ArgFd(info, 0, &fd)) return env.Undefined();
  const VmKind* k = FindVmKind(env, info[1]); if (!k) return env.Undefined();
  if (info.Length() < 3 || !info[2].IsBuffer() || info[2].As<Napi::Buffer<uint8_t>>().Length() != k->size) {
    Napi::RangeError::New(env, std::string("vmSetState(") + k->name + "): a Buffer of exactly " + std::to_string(k->size) + " bytes required").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<uint8_t> b(k->size);
  std::memcpy(b.data(), info[2].As<Napi::Buffer<uint8_t>>().Data(), k->size);
  if (k->chip >= 0) {
    auto* c = reinterpret_cast<kvm_irqchip*>(b.data());
    if (c->chip_id != static_cast<uint32_t>(k->chip)) {
      Napi::RangeError::New(env, std::string("vmSetState(") + k->name + "): blob is for another chip").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (Ioctl(fd, KVM_SET_IRQCHIP, c) < 0) return Throw(env, "ioctl(KVM_SET_IRQCHIP)", errno);
  } else if (!std::strcmp(k->name, "pit2")) {
    if (Ioctl(fd, KVM_SET_PIT2, b.data()) < 0) return Throw(env, "ioctl(KVM_SET_PIT2)", errno);
  } else {
    // KVM_GET_CLOCK reports flags (TSC_STABLE, REALTIME, HOST_TSC) that
    // KVM_SET_CLOCK reads differently: keep the clock value only, so the
    // guest's kvmclock continues from where it was saved.
    auto* c = reinterpret_cast<kvm_clock_data*>(b.data());
    c->flags = 0;
    if (Ioctl(fd, KVM_SET_CLOCK, c) < 0) return Throw(env, "ioctl(KVM_SET_CLOCK)", errno);
  }
  return env.Undefined();
}

// kvmGetMsrIndexList(kvmFd) -> [index] the MSRs KVM saves/restores for a guest.
Napi::Value KvmGetMsrIndexList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd; if (!ArgFd(info, 0, &fd)) return env.Undefined();
  for (uint32_t n = 256; n <= 16384; n *= 2) {
    std::vector<uint32_t> b(2 + n, 0);  // struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; }
    b[0] = n;
    if (Ioctl(fd, kKvmGetMsrIndexList, b.data()) < 0) {
      if (errno == E2BIG) continue;
      return Throw(env, "ioctl(KVM_GET_MSR_INDEX_LIST)", errno);
    }
    uint32_t got = b[0];
    Napi::Array out = Napi::Array::New(env, got);
    for (uint32_t i = 0; i < got; i++) out.Set(i, Napi::Number::New(env, b[1 + i]));
    return out;
  }
  return Throw(env, "ioctl(KVM_GET_MSR_INDEX_LIST)", E2BIG);
}

// mapFilePrivateOver(arrayBuffer, offset, length, fd, fileOffset):
// MAP_PRIVATE|MAP_FIXED over a page-aligned range of the buffer. Reads share
// the file's page cache with every other private mapping of it; the first
// write to a page copies it (the restored VM's own page). unmapOver()
// (mem.cc) puts anonymous zero pages back.
Napi::Value MapFilePrivateOver(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsArrayBuffer()) {
    Napi::TypeError::New(env, "mapFilePrivateOver(arrayBuffer, offset, length, fd, fileOffset)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  uint64_t off, len, foff; int fd;
  if (!ArgU64(info, 1, &off, "offset") || !ArgU64(info, 2, &len, "length") || !ArgFd(info, 3, &fd) || !ArgU64(info, 4, &foff, "fileOffset")) return env.Undefined();
  auto* base = static_cast<uint8_t*>(ab.Data());
  if (len == 0 || off + len > ab.ByteLength() || off + len < off ||
      (reinterpret_cast<uintptr_t>(base + off) % kPage) != 0 || len % kPage != 0 || foff % kPage != 0) {
    Napi::RangeError::New(env, "mapFilePrivateOver: range must be page aligned and inside the buffer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  void* p = mmap(base + off, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, static_cast<off_t>(foff));
  if (p == MAP_FAILED) return Throw(env, "mmap(MAP_PRIVATE)", errno);
  return env.Undefined();
}

}  // namespace

void InitKvmSnapshot(Napi::Env env, Napi::Object exports) {
  exports.Set("vmGetState", Napi::Function::New(env, VmGetState));
  exports.Set("vmSetState", Napi::Function::New(env, VmSetState));
  exports.Set("kvmGetMsrIndexList", Napi::Function::New(env, KvmGetMsrIndexList));
  exports.Set("mapFilePrivateOver", Napi::Function::New(env, MapFilePrivateOver));
}
