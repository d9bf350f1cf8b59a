// KVM system and VM ioctls (Documentation/virt/kvm/api.rst §4): open
// /dev/kvm, API version and extension checks, VM create, memory slots,
// in-kernel irqchip and PIT, TSS/identity-map addresses, supported CPUID,
// irqfd, ioeventfd (with datamatch), irq lines. Thin wrappers over file
// descriptors; which values to pass is decided in src/vmm.
// vCPUs live in kvm_vcpu.cc.
#include <napi.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <cerrno>
#include <vector>
#include "errors.h"
#include "kvm_abi.h"
#include "kvm_args.h"

using namespace kata;

namespace {

// ioctl that retries on EINTR (a signal to the main thread must not turn
// into a spurious failure of a VM-level ioctl).
int Ioctl(int fd, unsigned long req, void* arg) {
  int rc;
  do { rc = ioctl(fd, req, arg); } while (rc < 0 && errno == EINTR);
  return rc;
}
int IoctlV(int fd, unsigned long req, unsigned long arg) {
  int rc;
  do { rc = ioctl(fd, req, arg); } while (rc < 0 && errno == EINTR);
  return rc;
}

Napi::Value Throw(Napi::Env env, const char* name, int err) {
  SyscallError(env, name, err).ThrowAsJavaScriptException();
  return env.Undefined();
}

// kvmOpen(path = "/dev/kvm") -> fd (close-on-exec)
Napi::Value KvmOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "/dev/kvm";
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return Throw(env, ("open(" + path + ")").c_str(), errno);
  return Napi::Number::New(env, fd);
}

// kvmApiVersion(kvmFd) -> 12 on every kernel since 2.6.22
Napi::Value KvmApiVersion(const Napi::CallbackInfo& info) {
  int fd; if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  int v = IoctlV(fd, KVM_GET_API_VERSION, 0);
  if (v < 0) return Throw(info.Env(), "ioctl(KVM_GET_API_VERSION)", errno);
  return Napi::Number::New(info.Env(), v);
}

// kvmCheckExtension(fd, cap) -> 0 if absent, else a capability-specific value.
// Works on the system fd and (for some caps) on a VM fd.
Napi::Value KvmCheckExtension(const Napi::CallbackInfo& info) {
  int fd; int64_t cap;
  if (!ArgFd(info, 0, &fd) || !ArgInt(info, 1, &cap, "cap")) return info.Env().Undefined();
  int v = IoctlV(fd, KVM_CHECK_EXTENSION, static_cast<unsigned long>(cap));
  if (v < 0) return Throw(info.Env(), "ioctl(KVM_CHECK_EXTENSION)", errno);
  return Napi::Number::New(info.Env(), v);
}

Napi::Value KvmVcpuMmapSize(const Napi::CallbackInfo& info) {
  int fd; if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  int v = IoctlV(fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (v < 0) return Throw(info.Env(), "ioctl(KVM_GET_VCPU_MMAP_SIZE)", errno);
  return Napi::Number::New(info.Env(), v);
}

Napi::Value KvmCreateVm(const Napi::CallbackInfo& info) {
  int fd; if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  int vm = IoctlV(fd, KVM_CREATE_VM, 0);
  if (vm < 0) return Throw(info.Env(), "ioctl(KVM_CREATE_VM)", errno);
  // KVM fds are created close-on-exec already (anon_inode with O_CLOEXEC).
  return Napi::Number::New(info.Env(), vm);
}

// kvmGetSupportedCpuid(kvmFd) -> [{function,index,flags,eax,ebx,ecx,edx}]
Napi::Value KvmGetSupportedCpuid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd; if (!ArgFd(info, 0, &fd)) return env.Undefined();
  // E2BIG means "more entries than you offered": grow and retry (api.rst 4.46).
  for (uint32_t n = 256; n <= 4096; n *= 2) {  // 256 = KVM_MAX_CPUID_ENTRIES on 6.x
    VarBuf<kvm_cpuid_entry2> c(n);
    if (Ioctl(fd, kKvmGetSupportedCpuid, c.ptr()) < 0) {
      if (errno == E2BIG) continue;
      return Throw(env, "ioctl(KVM_GET_SUPPORTED_CPUID)", errno);
    }
    uint32_t got = c.hdr()->n;
    Napi::Array out = Napi::Array::New(env, got);
    for (uint32_t i = 0; i < got; i++) {
      const kvm_cpuid_entry2& e = *c.at(i);
      Napi::Object o = Napi::Object::New(env);
      o.Set("function", e.function); o.Set("index", e.index); o.Set("flags", e.flags);
      o.Set("eax", e.eax); o.Set("ebx", e.ebx); o.Set("ecx", e.ecx); o.Set("edx", e.edx);
      out.Set(i, o);
    }
    return out;
  }
  return Throw(env, "ioctl(KVM_GET_SUPPORTED_CPUID)", E2BIG);
}

// vmSetTssAddr(vmFd, addr): three pages below 4 GiB that the guest never uses
// (Intel needs them for real-mode emulation; harmless elsewhere).
Napi::Value VmSetTssAddr(const Napi::CallbackInfo& info) {
  int fd; uint64_t a;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, &a, "addr")) return info.Env().Undefined();
  if (IoctlV(fd, KVM_SET_TSS_ADDR, static_cast<unsigned long>(a)) < 0) return Throw(info.Env(), "ioctl(KVM_SET_TSS_ADDR)", errno);
  return info.Env().Undefined();
}

Napi::Value VmSetIdentityMapAddr(const Napi::CallbackInfo& info) {
  int fd; uint64_t a;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, &a, "addr")) return info.Env().Undefined();
  if (Ioctl(fd, KVM_SET_IDENTITY_MAP_ADDR, &a) < 0) return Throw(info.Env(), "ioctl(KVM_SET_IDENTITY_MAP_ADDR)", errno);
  return info.Env().Undefined();
}

Napi::Value VmCreateIrqchip(const Napi::CallbackInfo& info) {
  int fd; if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  if (IoctlV(fd, KVM_CREATE_IRQCHIP, 0) < 0) return Throw(info.Env(), "ioctl(KVM_CREATE_IRQCHIP)", errno);
  return info.Env().Undefined();
}

Napi::Value VmCreatePit2(const Napi::CallbackInfo& info) {
  int fd; if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  kvm_pit_config pc{};
  pc.flags = KVM_PIT_SPEAKER_DUMMY;  // port 0x61 handled in kernel, no exits
  if (Ioctl(fd, KVM_CREATE_PIT2, &pc) < 0) return Throw(info.Env(), "ioctl(KVM_CREATE_PIT2)", errno);
  return info.Env().Undefined();
}

// vmSetUserMemoryRegion(vmFd, slot, gpa, size, hostAddr, flags). size 0 deletes the slot.
Napi::Value VmSetUserMemoryRegion(const Napi::CallbackInfo& info) {
  int fd; int64_t slot, flags = 0; uint64_t gpa, size, host;
  if (!ArgFd(info, 0, &fd) || !ArgInt(info, 1, &slot, "slot") || !ArgU64(info, 2, &gpa, "gpa") ||
      !ArgU64(info, 3, &size, "size") || !ArgU64(info, 4, &host, "hostAddr")) return info.Env().Undefined();
  if (info.Length() > 5 && !ArgInt(info, 5, &flags, "flags")) return info.Env().Undefined();
  kvm_userspace_memory_region r{};
  r.slot = static_cast<uint32_t>(slot);
  r.flags = static_cast<uint32_t>(flags);
  r.guest_phys_addr = gpa;
  r.memory_size = size;
  r.userspace_addr = host;
  if (Ioctl(fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) return Throw(info.Env(), "ioctl(KVM_SET_USER_MEMORY_REGION)", errno);
  return info.Env().Undefined();
}

// vmIrqLine(vmFd, irq, level): edge = level 1 then 0 (legacy devices).
Napi::Value VmIrqLine(const Napi::CallbackInfo& info) {
  int fd; int64_t irq, level;
  if (!ArgFd(info, 0, &fd) || !ArgInt(info, 1, &irq, "irq") || !ArgInt(info, 2, &level, "level")) return info.Env().Undefined();
  kvm_irq_level l{};
  l.irq = static_cast<uint32_t>(irq);
  l.level = static_cast<uint32_t>(level);
  if (Ioctl(fd, KVM_IRQ_LINE, &l) < 0) return Throw(info.Env(), "ioctl(KVM_IRQ_LINE)", errno);
  return info.Env().Undefined();
}

// vmIrqfd(vmFd, eventfd, gsi, deassign=false): writes to eventfd raise gsi
// (edge) without a trip through this process (api.rst 4.75).
Napi::Value VmIrqfd(const Napi::CallbackInfo& info) {
  int fd, efd; int64_t gsi;
  if (!ArgFd(info, 0, &fd) || !ArgFd(info, 1, &efd) || !ArgInt(info, 2, &gsi, "gsi")) return info.Env().Undefined();
  kvm_irqfd r{};
  r.fd = static_cast<uint32_t>(efd);
  r.gsi = static_cast<uint32_t>(gsi);
  if (info.Length() > 3 && info[3].ToBoolean()) r.flags = KVM_IRQFD_FLAG_DEASSIGN;
  if (Ioctl(fd, KVM_IRQFD, &r) < 0) return Throw(info.Env(), "ioctl(KVM_IRQFD)", errno);
  return info.Env().Undefined();
}

// vmIoeventfd(vmFd, {fd, addr, len, pio?, datamatch?, deassign?}): a guest
// write of len bytes to addr signals fd instead of exiting (api.rst 4.59);
// with datamatch only when the written value equals it (virtio-mmio
// QueueNotify carries the queue index).
Napi::Value VmIoeventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd; if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsObject()) { Napi::TypeError::New(env, "vmIoeventfd: options object required").ThrowAsJavaScriptException(); return env.Undefined(); }
  Napi::Object o = info[1].As<Napi::Object>();
  kvm_ioeventfd r{};
  uint64_t efd, addr, len;
  if (!ValU64(env, o.Get("fd"), &efd, "fd") || !ValU64(env, o.Get("addr"), &addr, "addr") || !ValU64(env, o.Get("len"), &len, "len")) return env.Undefined();
  r.fd = static_cast<int32_t>(efd);
  r.addr = addr;
  r.len = static_cast<uint32_t>(len);
  if (o.Get("pio").ToBoolean()) r.flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (o.Get("deassign").ToBoolean()) r.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
  Napi::Value dm = o.Get("datamatch");
  if (!dm.IsUndefined() && !dm.IsNull()) {
    uint64_t v; if (!ValU64(env, dm, &v, "datamatch")) return env.Undefined();
    r.datamatch = v;
    r.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
  }
  if (Ioctl(fd, KVM_IOEVENTFD, &r) < 0) return Throw(env, "ioctl(KVM_IOEVENTFD)", errno);
  return env.Undefined();
}

// arrayBufferAddress(arrayBuffer) -> bigint host address: what KVM needs as
// userspace_addr for the guest-RAM range of the WebAssembly.Memory.
Napi::Value ArrayBufferAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) { Napi::TypeError::New(env, "arrayBufferAddress: ArrayBuffer required").ThrowAsJavaScriptException(); return env.Undefined(); }
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(info[0].As<Napi::ArrayBuffer>().Data())));
}

}  // namespace

void InitKvm(Napi::Env env, Napi::Object exports) {
  exports.Set("kvmOpen", Napi::Function::New(env, KvmOpen));
  exports.Set("kvmApiVersion", Napi::Function::New(env, KvmApiVersion));
  exports.Set("kvmCheckExtension", Napi::Function::New(env, KvmCheckExtension));
  exports.Set("kvmVcpuMmapSize", Napi::Function::New(env, KvmVcpuMmapSize));
  exports.Set("kvmCreateVm", Napi::Function::New(env, KvmCreateVm));
  exports.Set("kvmGetSupportedCpuid", Napi::Function::New(env, KvmGetSupportedCpuid));
  exports.Set("vmSetTssAddr", Napi::Function::New(env, VmSetTssAddr));
  exports.Set("vmSetIdentityMapAddr", Napi::Function::New(env, VmSetIdentityMapAddr));
  exports.Set("vmCreateIrqchip", Napi::Function::New(env, VmCreateIrqchip));
  exports.Set("vmCreatePit2", Napi::Function::New(env, VmCreatePit2));
  exports.Set("vmSetUserMemoryRegion", Napi::Function::New(env, VmSetUserMemoryRegion));
  exports.Set("vmIrqLine", Napi::Function::New(env, VmIrqLine));
  exports.Set("vmIrqfd", Napi::Function::New(env, VmIrqfd));
  exports.Set("vmIoeventfd", Napi::Function::New(env, VmIoeventfd));
  exports.Set("arrayBufferAddress", Napi::Function::New(env, ArrayBufferAddress));
}
