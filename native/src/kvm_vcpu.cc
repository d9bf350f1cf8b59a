// One KVM vCPU (Documentation/virt/kvm/api.rst §4.10 KVM_RUN, §5 kvm_run):
// fd + kvm_run mmap, register state get/set, and KVM_RUN on its own native
// thread.
//
// Exit delivery (measured, see bench/vmm.ts): the vCPU thread copies the exit
// into a fixed-layout "exit record" (an ArrayBuffer JS gave us, layout in
// src/vmm/kvm/exit-record.ts), posts the exit reason through a thread-safe
// function and blocks until the JS handler has returned; for IO-in and MMIO
// reads the handler's answer (written into the record) is copied back into
// kvm_run before the next KVM_RUN. The record keeps the kvm_run ABI out of
// JS and allocates nothing per exit. runOnce() does the same on the calling
// thread (for a Worker, and to measure what the thread hop costs).
//
// Pause/stop kick the thread out of KVM_RUN with a signal plus
// kvm_run.immediate_exit (api.rst KVM_CAP_IMMEDIATE_EXIT), which closes the
// race between checking the flags and entering the guest.
#include <napi.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
#include "errors.h"
#include "kvm_abi.h"
#include "kvm_args.h"

using namespace kata;

namespace {

// Our own reasons beyond KVM's exit_reason numbers.
constexpr uint32_t kReasonPaused = 0x1000;
constexpr uint32_t kReasonRunError = 0x1001;  // KVM_RUN failed: aux0 = errno
constexpr uint32_t kReasonStopped = 0x1002;

// Exit record layout (mirrored in src/vmm/kvm/exit-record.ts).
constexpr size_t kRecReason = 0, kRecWrite = 4, kRecAddr = 8, kRecSize = 16, kRecCount = 20,
                 kRecAux0 = 24, kRecAux1 = 28, kRecAuxData = 32, kRecData = 160;
constexpr size_t kRecDataMax = 4096;
constexpr size_t kRecBytes = kRecData + kRecDataMax;

int KickSignal() { return SIGRTMIN + 3; }
void KickHandler(int) {}  // only there to make KVM_RUN return EINTR
std::once_flag kickOnce;
void InstallKick() {
  std::call_once(kickOnce, [] {
    struct sigaction sa{};
    sa.sa_handler = KickHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    sigaction(KickSignal(), &sa, nullptr);
  });
}

template <typename T> void Put(uint8_t* rec, size_t off, T v) { std::memcpy(rec + off, &v, sizeof(T)); }

class Vcpu;
void CallJs(Napi::Env env, Napi::Function fn, Vcpu* ctx, void* data);
using Tsfn = Napi::TypedThreadSafeFunction<Vcpu, void, CallJs>;

class Vcpu : public Napi::ObjectWrap<Vcpu> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "KvmVcpu", {
      InstanceMethod("getRegs", &Vcpu::GetRegs), InstanceMethod("setRegs", &Vcpu::SetRegs),
      InstanceMethod("getSregs", &Vcpu::GetSregs), InstanceMethod("setSregs", &Vcpu::SetSregs),
      InstanceMethod("getFpu", &Vcpu::GetFpu), InstanceMethod("setFpu", &Vcpu::SetFpu),
      InstanceMethod("getXcrs", &Vcpu::GetXcrs), InstanceMethod("setXcrs", &Vcpu::SetXcrs),
      InstanceMethod("getLapic", &Vcpu::GetLapic), InstanceMethod("setLapic", &Vcpu::SetLapic),
      InstanceMethod("getMsrs", &Vcpu::GetMsrs), InstanceMethod("setMsrs", &Vcpu::SetMsrs),
      InstanceMethod("setCpuid2", &Vcpu::SetCpuid2), InstanceMethod("getMpState", &Vcpu::GetMpState),
      InstanceMethod("setMpState", &Vcpu::SetMpState),
      InstanceMethod("getState", &Vcpu::GetState), InstanceMethod("setState", &Vcpu::SetState),
      InstanceMethod("start", &Vcpu::Start), InstanceMethod("runOnce", &Vcpu::RunOnce),
      InstanceMethod("pause", &Vcpu::Pause), InstanceMethod("resume", &Vcpu::Resume),
      InstanceMethod("stop", &Vcpu::Stop), InstanceMethod("close", &Vcpu::Close),
      InstanceAccessor("fd", &Vcpu::Fd, nullptr), InstanceAccessor("running", &Vcpu::Running, nullptr),
    });
  }

  // new KvmVcpu(vmFd, index, mmapSize, record: ArrayBuffer)
  explicit Vcpu(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Vcpu>(info) {
    Napi::Env env = info.Env();
    int vmFd; int64_t index, mmapSize;
    if (!ArgFd(info, 0, &vmFd) || !ArgInt(info, 1, &index, "index") || !ArgInt(info, 2, &mmapSize, "mmapSize")) return;
    if (info.Length() < 4 || !info[3].IsArrayBuffer() || info[3].As<Napi::ArrayBuffer>().ByteLength() < kRecBytes) {
      Napi::TypeError::New(env, "KvmVcpu: exit record must be an ArrayBuffer of at least " + std::to_string(kRecBytes) + " bytes").ThrowAsJavaScriptException();
      return;
    }
    recordRef_ = Napi::Persistent(info[3].As<Napi::ArrayBuffer>());
    rec_ = static_cast<uint8_t*>(info[3].As<Napi::ArrayBuffer>().Data());
    int fd;
    do { fd = ioctl(vmFd, KVM_CREATE_VCPU, static_cast<unsigned long>(index)); } while (fd < 0 && errno == EINTR);
    if (fd < 0) { SyscallError(env, "ioctl(KVM_CREATE_VCPU)", errno).ThrowAsJavaScriptException(); return; }
    void* p = mmap(nullptr, static_cast<size_t>(mmapSize), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno; close(fd);
      SyscallError(env, "mmap(kvm_run)", e).ThrowAsJavaScriptException();
      return;
    }
    fd_ = fd;
    run_ = static_cast<kvm_run*>(p);
    runSize_ = static_cast<size_t>(mmapSize);
    InstallKick();
  }

  ~Vcpu() override { Teardown(); }

 private:
  friend void CallJs(Napi::Env, Napi::Function, Vcpu*, void*);

  bool Usable(Napi::Env env) {
    if (fd_ < 0) { Napi::Error::New(env, "KvmVcpu: closed").ThrowAsJavaScriptException(); return false; }
    return true;
  }
  // Register access while the thread is inside KVM_RUN would block the JS
  // thread on the vCPU mutex until the next exit: refuse instead.
  bool Quiescent(Napi::Env env) {
    if (!Usable(env)) return false;
    if (thread_.joinable() && !inExit_.load() && !parked_.load()) {
      Napi::Error::New(env, "KvmVcpu: state access needs the vCPU paused or inside an exit handler").ThrowAsJavaScriptException();
      return false;
    }
    return true;
  }
  int Io(unsigned long req, void* arg) {
    int rc;
    do { rc = ioctl(fd_, req, arg); } while (rc < 0 && errno == EINTR);
    return rc;
  }
  Napi::Value Fail(Napi::Env env, const char* name) {
    SyscallError(env, name, errno).ThrowAsJavaScriptException();
    return env.Undefined();
  }

  Napi::Value Fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value Running(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), thread_.joinable()); }

  // ---- registers: plain objects with bigint fields (api.rst 4.11-4.14) ----
  Napi::Value GetRegs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    kvm_regs r{};
    if (Io(KVM_GET_REGS, &r) < 0) return Fail(env, "ioctl(KVM_GET_REGS)");
    Napi::Object o = Napi::Object::New(env);
#define R(n) o.Set(#n, Napi::BigInt::New(env, static_cast<uint64_t>(r.n)));
    R(rax) R(rbx) R(rcx) R(rdx) R(rsi) R(rdi) R(rsp) R(rbp) R(r8) R(r9) R(r10) R(r11) R(r12) R(r13) R(r14) R(r15) R(rip) R(rflags)
#undef R
    return o;
  }
  // setRegs(partial): fields not given keep their current value.
  Napi::Value SetRegs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsObject()) { Napi::TypeError::New(env, "setRegs: object required").ThrowAsJavaScriptException(); return env.Undefined(); }
    Napi::Object o = info[0].As<Napi::Object>();
    kvm_regs r{};
    if (Io(KVM_GET_REGS, &r) < 0) return Fail(env, "ioctl(KVM_GET_REGS)");
#define R(n) if (o.Has(#n)) { uint64_t v; if (!ValU64(env, o.Get(#n), &v, #n)) return env.Undefined(); r.n = v; }
    R(rax) R(rbx) R(rcx) R(rdx) R(rsi) R(rdi) R(rsp) R(rbp) R(r8) R(r9) R(r10) R(r11) R(r12) R(r13) R(r14) R(r15) R(rip) R(rflags)
#undef R
    if (Io(KVM_SET_REGS, &r) < 0) return Fail(env, "ioctl(KVM_SET_REGS)");
    return env.Undefined();
  }

  static Napi::Object SegOut(Napi::Env env, const kvm_segment& s) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("base", Napi::BigInt::New(env, static_cast<uint64_t>(s.base)));
    o.Set("limit", s.limit); o.Set("selector", s.selector); o.Set("type", s.type);
    o.Set("present", s.present); o.Set("dpl", s.dpl); o.Set("db", s.db); o.Set("s", s.s);
    o.Set("l", s.l); o.Set("g", s.g); o.Set("avl", s.avl); o.Set("unusable", s.unusable);
    return o;
  }
  static bool SegIn(Napi::Env env, Napi::Value v, kvm_segment* s) {
    if (!v.IsObject()) return true;
    Napi::Object o = v.As<Napi::Object>();
    uint64_t x;
    if (o.Has("base")) { if (!ValU64(env, o.Get("base"), &x, "segment.base")) return false; s->base = x; }
#define F(n, T) if (o.Has(#n)) { if (!ValU64(env, o.Get(#n), &x, "segment." #n)) return false; s->n = static_cast<T>(x); }
    F(limit, uint32_t) F(selector, uint16_t) F(type, uint8_t) F(present, uint8_t) F(dpl, uint8_t) F(db, uint8_t)
    F(s, uint8_t) F(l, uint8_t) F(g, uint8_t) F(avl, uint8_t) F(unusable, uint8_t)
#undef F
    return true;
  }
  Napi::Value GetSregs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    kvm_sregs s{};
    if (Io(KVM_GET_SREGS, &s) < 0) return Fail(env, "ioctl(KVM_GET_SREGS)");
    Napi::Object o = Napi::Object::New(env);
    o.Set("cs", SegOut(env, s.cs)); o.Set("ds", SegOut(env, s.ds)); o.Set("es", SegOut(env, s.es));
    o.Set("fs", SegOut(env, s.fs)); o.Set("gs", SegOut(env, s.gs)); o.Set("ss", SegOut(env, s.ss));
    o.Set("tr", SegOut(env, s.tr)); o.Set("ldt", SegOut(env, s.ldt));
    for (auto [name, d] : {std::pair<const char*, kvm_dtable*>{"gdt", &s.gdt}, {"idt", &s.idt}}) {
      Napi::Object t = Napi::Object::New(env);
      t.Set("base", Napi::BigInt::New(env, static_cast<uint64_t>(d->base)));
      t.Set("limit", d->limit);
      o.Set(name, t);
    }
#define C(n) o.Set(#n, Napi::BigInt::New(env, static_cast<uint64_t>(s.n)));
    C(cr0) C(cr2) C(cr3) C(cr4) C(cr8) C(efer) C(apic_base)
#undef C
    return o;
  }
  // setSregs(partial): read-modify-write so the interrupt bitmap and any
  // field not named stay as KVM has them.
  Napi::Value SetSregs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsObject()) { Napi::TypeError::New(env, "setSregs: object required").ThrowAsJavaScriptException(); return env.Undefined(); }
    Napi::Object o = info[0].As<Napi::Object>();
    kvm_sregs s{};
    if (Io(KVM_GET_SREGS, &s) < 0) return Fail(env, "ioctl(KVM_GET_SREGS)");
    if (!SegIn(env, o.Get("cs"), &s.cs) || !SegIn(env, o.Get("ds"), &s.ds) || !SegIn(env, o.Get("es"), &s.es) ||
        !SegIn(env, o.Get("fs"), &s.fs) || !SegIn(env, o.Get("gs"), &s.gs) || !SegIn(env, o.Get("ss"), &s.ss) ||
        !SegIn(env, o.Get("tr"), &s.tr) || !SegIn(env, o.Get("ldt"), &s.ldt)) return env.Undefined();
    for (auto [name, d] : {std::pair<const char*, kvm_dtable*>{"gdt", &s.gdt}, {"idt", &s.idt}}) {
      Napi::Value v = o.Get(name);
      if (!v.IsObject()) continue;
      uint64_t x;
      Napi::Object t = v.As<Napi::Object>();
      if (t.Has("base")) { if (!ValU64(env, t.Get("base"), &x, "dtable.base")) return env.Undefined(); d->base = x; }
      if (t.Has("limit")) { if (!ValU64(env, t.Get("limit"), &x, "dtable.limit")) return env.Undefined(); d->limit = static_cast<uint16_t>(x); }
    }
    uint64_t x;
#define C(n) if (o.Has(#n)) { if (!ValU64(env, o.Get(#n), &x, #n)) return env.Undefined(); s.n = x; }
    C(cr0) C(cr2) C(cr3) C(cr4) C(cr8) C(efer) C(apic_base)
#undef C
    if (Io(KVM_SET_SREGS, &s) < 0) return Fail(env, "ioctl(KVM_SET_SREGS)");
    return env.Undefined();
  }

  Napi::Value GetFpu(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    kvm_fpu f{};
    if (Io(KVM_GET_FPU, &f) < 0) return Fail(env, "ioctl(KVM_GET_FPU)");
    Napi::Object o = Napi::Object::New(env);
    o.Set("fcw", f.fcw); o.Set("fsw", f.fsw); o.Set("ftwx", f.ftwx); o.Set("mxcsr", f.mxcsr);
    return o;
  }
  Napi::Value SetFpu(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsObject()) { Napi::TypeError::New(env, "setFpu: object required").ThrowAsJavaScriptException(); return env.Undefined(); }
    Napi::Object o = info[0].As<Napi::Object>();
    kvm_fpu f{};
    if (Io(KVM_GET_FPU, &f) < 0) return Fail(env, "ioctl(KVM_GET_FPU)");
    uint64_t x;
    if (o.Has("fcw")) { if (!ValU64(env, o.Get("fcw"), &x, "fcw")) return env.Undefined(); f.fcw = static_cast<uint16_t>(x); }
    if (o.Has("mxcsr")) { if (!ValU64(env, o.Get("mxcsr"), &x, "mxcsr")) return env.Undefined(); f.mxcsr = static_cast<uint32_t>(x); }
    if (Io(KVM_SET_FPU, &f) < 0) return Fail(env, "ioctl(KVM_SET_FPU)");
    return env.Undefined();
  }

  Napi::Value GetXcrs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    kvm_xcrs x{};
    if (Io(KVM_GET_XCRS, &x) < 0) return Fail(env, "ioctl(KVM_GET_XCRS)");
    Napi::Array a = Napi::Array::New(env, x.nr_xcrs);
    for (uint32_t i = 0; i < x.nr_xcrs; i++) {
      Napi::Object e = Napi::Object::New(env);
      e.Set("xcr", x.xcrs[i].xcr);
      e.Set("value", Napi::BigInt::New(env, static_cast<uint64_t>(x.xcrs[i].value)));
      a.Set(i, e);
    }
    return a;
  }
  Napi::Value SetXcrs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsArray()) { Napi::TypeError::New(env, "setXcrs: array required").ThrowAsJavaScriptException(); return env.Undefined(); }
    Napi::Array a = info[0].As<Napi::Array>();
    kvm_xcrs x{};
    if (a.Length() > KVM_MAX_XCRS) { Napi::RangeError::New(env, "setXcrs: too many").ThrowAsJavaScriptException(); return env.Undefined(); }
    x.nr_xcrs = a.Length();
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Value ev = a.Get(i);
      if (!ev.IsObject()) { Napi::TypeError::New(env, "setXcrs: entries must be objects").ThrowAsJavaScriptException(); return env.Undefined(); }
      Napi::Object e = ev.As<Napi::Object>();
      uint64_t xcr, v;
      if (!ValU64(env, e.Get("xcr"), &xcr, "xcr") || !ValU64(env, e.Get("value"), &v, "value")) return env.Undefined();
      x.xcrs[i].xcr = static_cast<uint32_t>(xcr);
      x.xcrs[i].value = v;
    }
    if (Io(KVM_SET_XCRS, &x) < 0) return Fail(env, "ioctl(KVM_SET_XCRS)");
    return env.Undefined();
  }

  // LAPIC state as the raw 1 KiB register page (api.rst 4.57); src/vmm edits LVTs.
  Napi::Value GetLapic(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    kvm_lapic_state l{};
    if (Io(KVM_GET_LAPIC, &l) < 0) return Fail(env, "ioctl(KVM_GET_LAPIC)");
    return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<uint8_t*>(l.regs), sizeof(l.regs));
  }
  Napi::Value SetLapic(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsBuffer() || info[0].As<Napi::Buffer<uint8_t>>().Length() != KVM_APIC_REG_SIZE) {
      Napi::TypeError::New(env, "setLapic: a 1024-byte Buffer required").ThrowAsJavaScriptException(); return env.Undefined();
    }
    kvm_lapic_state l{};
    std::memcpy(l.regs, info[0].As<Napi::Buffer<uint8_t>>().Data(), sizeof(l.regs));
    if (Io(KVM_SET_LAPIC, &l) < 0) return Fail(env, "ioctl(KVM_SET_LAPIC)");
    return env.Undefined();
  }

  // getMsrs([index]) -> [bigint]; throws if KVM returned fewer than asked
  // (the ioctl returns how many it read, not an error).
  Napi::Value GetMsrs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsArray()) { Napi::TypeError::New(env, "getMsrs: array of indices required").ThrowAsJavaScriptException(); return env.Undefined(); }
    Napi::Array a = info[0].As<Napi::Array>();
    uint32_t n = a.Length();
    VarBuf<kvm_msr_entry> m(n);
    for (uint32_t i = 0; i < n; i++) {
      uint64_t idx; if (!ValU64(env, a.Get(i), &idx, "msr index")) return env.Undefined();
      m.at(i)->index = static_cast<uint32_t>(idx);
    }
    int got = Io(kKvmGetMsrs, m.ptr());
    if (got < 0) return Fail(env, "ioctl(KVM_GET_MSRS)");
    if (static_cast<uint32_t>(got) != n) {
      Napi::Error::New(env, "ioctl(KVM_GET_MSRS): MSR 0x" + ToHex(m.at(static_cast<uint32_t>(got))->index) + " is not supported").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Array out = Napi::Array::New(env, n);
    for (uint32_t i = 0; i < n; i++) out.Set(i, Napi::BigInt::New(env, static_cast<uint64_t>(m.at(i)->data)));
    return out;
  }
  static std::string ToHex(uint32_t v) { char b[16]; snprintf(b, sizeof b, "%x", v); return b; }
  // setMsrs([[index, value]]) — all or an error naming the first refused MSR.
  Napi::Value SetMsrs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsArray()) { Napi::TypeError::New(env, "setMsrs: array of [index, value] required").ThrowAsJavaScriptException(); return env.Undefined(); }
    Napi::Array a = info[0].As<Napi::Array>();
    uint32_t n = a.Length();
    VarBuf<kvm_msr_entry> m(n);
    for (uint32_t i = 0; i < n; i++) {
      Napi::Value ev = a.Get(i);
      if (!ev.IsArray() || ev.As<Napi::Array>().Length() != 2) { Napi::TypeError::New(env, "setMsrs: entries must be [index, value]").ThrowAsJavaScriptException(); return env.Undefined(); }
      uint64_t idx, v;
      if (!ValU64(env, ev.As<Napi::Array>().Get(0u), &idx, "msr index") || !ValU64(env, ev.As<Napi::Array>().Get(1u), &v, "msr value")) return env.Undefined();
      m.at(i)->index = static_cast<uint32_t>(idx);
      m.at(i)->data = v;
    }
    int got = Io(kKvmSetMsrs, m.ptr());
    if (got < 0) return Fail(env, "ioctl(KVM_SET_MSRS)");
    if (static_cast<uint32_t>(got) != n) {
      Napi::Error::New(env, "ioctl(KVM_SET_MSRS): MSR 0x" + ToHex(m.at(static_cast<uint32_t>(got))->index) + " was refused").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return env.Undefined();
  }

  // setCpuid2([{function,index,flags,eax,ebx,ecx,edx}]) — the filtered
  // result of kvmGetSupportedCpuid (filtering is policy: src/vmm/cpuid.ts).
  Napi::Value SetCpuid2(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsArray()) { Napi::TypeError::New(env, "setCpuid2: array required").ThrowAsJavaScriptException(); return env.Undefined(); }
    Napi::Array a = info[0].As<Napi::Array>();
    uint32_t n = a.Length();
    VarBuf<kvm_cpuid_entry2> c(n);
    for (uint32_t i = 0; i < n; i++) {
      Napi::Value ev = a.Get(i);
      if (!ev.IsObject()) { Napi::TypeError::New(env, "setCpuid2: entries must be objects").ThrowAsJavaScriptException(); return env.Undefined(); }
      Napi::Object e = ev.As<Napi::Object>();
      uint64_t v[7];
      const char* names[7] = {"function", "index", "flags", "eax", "ebx", "ecx", "edx"};
      for (int k = 0; k < 7; k++) if (!ValU64(env, e.Get(names[k]), &v[k], names[k])) return env.Undefined();
      kvm_cpuid_entry2& d = *c.at(i);
      d.function = static_cast<uint32_t>(v[0]); d.index = static_cast<uint32_t>(v[1]); d.flags = static_cast<uint32_t>(v[2]);
      d.eax = static_cast<uint32_t>(v[3]); d.ebx = static_cast<uint32_t>(v[4]); d.ecx = static_cast<uint32_t>(v[5]); d.edx = static_cast<uint32_t>(v[6]);
    }
    if (Io(kKvmSetCpuid2, c.ptr()) < 0) return Fail(env, "ioctl(KVM_SET_CPUID2)");
    return env.Undefined();
  }

  Napi::Value GetMpState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    kvm_mp_state s{};
    if (Io(KVM_GET_MP_STATE, &s) < 0) return Fail(env, "ioctl(KVM_GET_MP_STATE)");
    return Napi::Number::New(env, s.mp_state);
  }

  // setMpState(state): KVM_MP_STATE_RUNNABLE (0) lets an AP run without INIT/SIPI.
  Napi::Value SetMpState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    int64_t st; if (!ArgInt(info, 0, &st, "mp_state")) return env.Undefined();
    kvm_mp_state s{};
    s.mp_state = static_cast<uint32_t>(st);
    if (Io(KVM_SET_MP_STATE, &s) < 0) return Fail(env, "ioctl(KVM_SET_MP_STATE)");
    return env.Undefined();
  }

  // ---- snapshot blobs: KVM's own structs byte for byte (src/vmm/snapshot) ----
  struct StateKind { const char* name; size_t size; unsigned long get; unsigned long set; };
  static const StateKind* FindKind(Napi::Env env, Napi::Value v) {
    static const StateKind kinds[] = {
      {"regs", sizeof(kvm_regs), KVM_GET_REGS, KVM_SET_REGS},
      {"sregs", sizeof(kvm_sregs), KVM_GET_SREGS, KVM_SET_SREGS},
      {"fpu", sizeof(kvm_fpu), KVM_GET_FPU, KVM_SET_FPU},
      {"xsave", sizeof(kvm_xsave), KVM_GET_XSAVE, KVM_SET_XSAVE},
      {"xcrs", sizeof(kvm_xcrs), KVM_GET_XCRS, KVM_SET_XCRS},
      {"lapic", sizeof(kvm_lapic_state), KVM_GET_LAPIC, KVM_SET_LAPIC},
      {"mpstate", sizeof(kvm_mp_state), KVM_GET_MP_STATE, KVM_SET_MP_STATE},
      {"events", sizeof(kvm_vcpu_events), KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS},
      {"debugregs", sizeof(kvm_debugregs), KVM_GET_DEBUGREGS, KVM_SET_DEBUGREGS},
    };
    return FindByName(env, v, kinds, "vCPU state kind");
  }
  // getState(kind) -> Buffer
  Napi::Value GetState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    const StateKind* k = FindKind(env, info[0]); if (!k) return env.Undefined();
    size_t size = k->size;
    unsigned long req = k->get;
    // XSAVE: hosts with large state components (AMX) need KVM_GET_XSAVE2
    // and the size KVM_CAP_XSAVE2 reports (the caller passes it); the
    // plain KVM_GET_XSAVE then fails with EINVAL.
    if (k->get == KVM_GET_XSAVE && info.Length() > 1 && info[1].IsNumber()) {
      int64_t want = info[1].As<Napi::Number>().Int64Value();
      if (want > static_cast<int64_t>(size) && want <= (1 << 20)) { size = static_cast<size_t>(want); req = KVM_GET_XSAVE2; }
    }
    std::vector<uint8_t> b(size, 0);
    if (Io(req, b.data()) < 0) return Fail(env, (std::string("ioctl(KVM_GET_") + k->name + ")").c_str());
    return Napi::Buffer<uint8_t>::Copy(env, b.data(), b.size());
  }
  // setState(kind, buffer): exactly the struct's size.
  Napi::Value SetState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Quiescent(env)) return env.Undefined();
    const StateKind* k = FindKind(env, info[0]); if (!k) return env.Undefined();
    // XSAVE may be larger than struct kvm_xsave (see GetState); KVM reads its own uabi size.
    bool sizeOk = info.Length() >= 2 && info[1].IsBuffer() &&
        (k->set == KVM_SET_XSAVE ? info[1].As<Napi::Buffer<uint8_t>>().Length() >= k->size && info[1].As<Napi::Buffer<uint8_t>>().Length() <= (1u << 20)
                                 : info[1].As<Napi::Buffer<uint8_t>>().Length() == k->size);
    if (!sizeOk) {
      Napi::RangeError::New(env, std::string("setState(") + k->name + "): a Buffer of " + std::to_string(k->size) + " bytes required").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    size_t n = info[1].As<Napi::Buffer<uint8_t>>().Length();
    std::vector<uint8_t> b(n);
    std::memcpy(b.data(), info[1].As<Napi::Buffer<uint8_t>>().Data(), n);
    if (Io(k->set, b.data()) < 0) return Fail(env, (std::string("ioctl(KVM_SET_") + k->name + ")").c_str());
    return env.Undefined();
  }

  // ---- running ----

  // Before re-entering the guest: hand the answer to an IO-in / MMIO-read exit back to KVM.
  void CompleteExit() {
    if (!needAnswer_) return;
    needAnswer_ = false;
    if (run_->exit_reason == KVM_EXIT_IO) {
      size_t n = static_cast<size_t>(run_->io.size) * run_->io.count;
      std::memcpy(reinterpret_cast<uint8_t*>(run_) + run_->io.data_offset, rec_ + kRecData, n);
    } else if (run_->exit_reason == KVM_EXIT_MMIO) {
      std::memcpy(run_->mmio.data, rec_ + kRecData, run_->mmio.len);
    }
  }

  // One KVM_RUN; fills the record; returns the reason. Retries EINTR unless
  // a pause/stop asked for the kick.
  uint32_t RunStep() {
    CompleteExit();
    for (;;) {
      run_->immediate_exit = 0;
      if (stopReq_.load()) return kReasonStopped;
      if (pauseReq_.load()) {
        // api.rst (KVM_RUN, immediate_exit): an IO/MMIO exit is complete in
        // the guest's registers only after the next KVM_RUN. Enter once with
        // immediate_exit set (returns EINTR at once) so that a snapshot taken
        // while parked sees a consistent vCPU.
        run_->immediate_exit = 1;
        ioctl(fd_, KVM_RUN, 0);
        run_->immediate_exit = 0;
        return kReasonPaused;
      }
      int rc = ioctl(fd_, KVM_RUN, 0);
      if (rc < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        Put<uint32_t>(rec_, kRecAux0, static_cast<uint32_t>(errno));
        Put<uint32_t>(rec_, kRecReason, kReasonRunError);
        return kReasonRunError;
      }
      break;
    }
    uint32_t r = run_->exit_reason;
    Put<uint32_t>(rec_, kRecReason, r);
    switch (r) {
      case KVM_EXIT_IO: {
        size_t n = static_cast<size_t>(run_->io.size) * run_->io.count;
        if (n > kRecDataMax) n = kRecDataMax;  // KVM limits string IO to one page
        Put<uint32_t>(rec_, kRecWrite, run_->io.direction == KVM_EXIT_IO_OUT);
        Put<uint64_t>(rec_, kRecAddr, run_->io.port);
        Put<uint32_t>(rec_, kRecSize, run_->io.size);
        Put<uint32_t>(rec_, kRecCount, run_->io.count);
        if (run_->io.direction == KVM_EXIT_IO_OUT) std::memcpy(rec_ + kRecData, reinterpret_cast<uint8_t*>(run_) + run_->io.data_offset, n);
        else { std::memset(rec_ + kRecData, 0xff, n); needAnswer_ = true; }
        break;
      }
      case KVM_EXIT_MMIO: {
        uint32_t len = run_->mmio.len > 8 ? 8 : run_->mmio.len;
        Put<uint32_t>(rec_, kRecWrite, run_->mmio.is_write);
        Put<uint64_t>(rec_, kRecAddr, run_->mmio.phys_addr);
        Put<uint32_t>(rec_, kRecSize, len);
        Put<uint32_t>(rec_, kRecCount, 1);
        std::memset(rec_ + kRecData, 0, 8);
        if (run_->mmio.is_write) std::memcpy(rec_ + kRecData, run_->mmio.data, len);
        else { std::memset(rec_ + kRecData, 0xff, len); needAnswer_ = true; }
        break;
      }
      case KVM_EXIT_SYSTEM_EVENT:
        Put<uint32_t>(rec_, kRecAux0, run_->system_event.type);
        Put<uint32_t>(rec_, kRecAux1, run_->system_event.ndata);
        for (uint32_t i = 0; i < run_->system_event.ndata && i < 16; i++) Put<uint64_t>(rec_, kRecAuxData + 8 * i, run_->system_event.data[i]);
        break;
      case KVM_EXIT_INTERNAL_ERROR:
        Put<uint32_t>(rec_, kRecAux0, run_->internal.suberror);
        Put<uint32_t>(rec_, kRecAux1, run_->internal.ndata);
        for (uint32_t i = 0; i < run_->internal.ndata && i < 16; i++) Put<uint64_t>(rec_, kRecAuxData + 8 * i, run_->internal.data[i]);
        break;
      case KVM_EXIT_FAIL_ENTRY:
        Put<uint64_t>(rec_, kRecAuxData, run_->fail_entry.hardware_entry_failure_reason);
        Put<uint32_t>(rec_, kRecAux0, run_->fail_entry.cpu);
        break;
      default:
        break;
    }
    return r;
  }

  static bool Terminal(uint32_t r) { return r != KVM_EXIT_IO && r != KVM_EXIT_MMIO && r != kReasonPaused; }

  void ThreadMain() {
    for (;;) {
      uint32_t r = RunStep();
      if (r == kReasonStopped) break;
      if (r == kReasonPaused) {
        std::unique_lock<std::mutex> lk(mu_);
        parked_ = true;
        tsfn_.NonBlockingCall(reinterpret_cast<void*>(static_cast<uintptr_t>(kReasonPaused)));
        cv_.wait(lk, [&] { return !pauseReq_.load() || stopReq_.load(); });
        parked_ = false;
        continue;
      }
      if (Terminal(r)) {
        tsfn_.NonBlockingCall(reinterpret_cast<void*>(static_cast<uintptr_t>(r)));
        break;
      }
      // IO / MMIO: hand to JS and wait for its answer (or a stop).
      std::unique_lock<std::mutex> lk(mu_);
      answered_ = false;
      inExit_ = true;
      tsfn_.NonBlockingCall(reinterpret_cast<void*>(static_cast<uintptr_t>(r)));
      cv_.wait(lk, [&] { return answered_ || stopReq_.load(); });
      inExit_ = false;
      if (!answered_) break;
    }
    tsfn_.Release();
    threadDone_ = true;
  }

  // start(handler(reason)) — handler runs on the JS thread for every exit,
  // reads/writes the record, returns nothing. Terminal reasons end the thread.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    if (thread_.joinable()) { Napi::Error::New(env, "KvmVcpu: already started").ThrowAsJavaScriptException(); return env.Undefined(); }
    if (info.Length() < 1 || !info[0].IsFunction()) { Napi::TypeError::New(env, "start: handler function required").ThrowAsJavaScriptException(); return env.Undefined(); }
    stopReq_ = false;
    threadDone_ = false;
    finished_ = false;
    tsfn_ = Tsfn::New(env, info[0].As<Napi::Function>(), "kvm-vcpu", 0, 1, this, [](Napi::Env, void*, Vcpu* v) { v->Unref(); });
    Ref();  // keep this object alive until the thread-safe function is finalized
    thread_ = std::thread([this] { ThreadMain(); });
    return env.Undefined();
  }

  // runOnce() -> reason, on the calling thread (never while started).
  Napi::Value RunOnce(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    if (thread_.joinable()) { Napi::Error::New(env, "KvmVcpu: runOnce while the vCPU thread runs").ThrowAsJavaScriptException(); return env.Undefined(); }
    pauseReq_ = false;
    return Napi::Number::New(env, RunStep());
  }

  void Kick() {
    if (run_) run_->immediate_exit = 1;
    if (thread_.joinable()) pthread_kill(thread_.native_handle(), KickSignal());
  }

  // pause(): the thread leaves KVM_RUN and parks; the handler sees reason
  // PAUSED. Returns true when the thread is already parked (a second pause:
  // no new PAUSED exit will come, and with pauseReq_ set under the lock it
  // stays parked).
  Napi::Value Pause(const Napi::CallbackInfo& info) {
    if (!Usable(info.Env())) return info.Env().Undefined();
    bool already;
    { std::lock_guard<std::mutex> lk(mu_); pauseReq_ = true; already = parked_.load(); }
    if (!already) Kick();
    return Napi::Boolean::New(info.Env(), already);
  }
  Napi::Value Resume(const Napi::CallbackInfo& info) {
    { std::lock_guard<std::mutex> lk(mu_); pauseReq_ = false; }
    cv_.notify_all();
    return info.Env().Undefined();
  }

  // stop(): ends and joins the thread. Safe from inside the handler: the
  // thread never waits on the JS thread without also watching stopReq_.
  void StopThread() {
    if (!thread_.joinable()) return;
    { std::lock_guard<std::mutex> lk(mu_); stopReq_ = true; }
    cv_.notify_all();
    // Kick until the thread is out (a signal can land just before KVM_RUN;
    // immediate_exit covers that, the loop covers a lost race on exit).
    while (!finishedThread()) { Kick(); usleep(200); }
    thread_.join();
    finished_ = true;
  }
  bool finishedThread() { return threadDone_.load(); }
  Napi::Value Stop(const Napi::CallbackInfo& info) { StopThread(); return info.Env().Undefined(); }

  void Teardown() {
    StopThread();
    if (run_) { munmap(run_, runSize_); run_ = nullptr; }
    if (fd_ >= 0) { close(fd_); fd_ = -1; }
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Teardown();
    if (!recordRef_.IsEmpty()) recordRef_.Reset();
    rec_ = nullptr;
    return info.Env().Undefined();
  }

  int fd_ = -1;
  kvm_run* run_ = nullptr;
  size_t runSize_ = 0;
  uint8_t* rec_ = nullptr;
  Napi::Reference<Napi::ArrayBuffer> recordRef_;
  bool needAnswer_ = false;
  std::thread thread_;
  Tsfn tsfn_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> pauseReq_{false}, stopReq_{false}, inExit_{false}, parked_{false}, threadDone_{false};
  bool answered_ = false;
  bool finished_ = false;

 public:
  void Answer() {
    { std::lock_guard<std::mutex> lk(mu_); answered_ = true; }
    cv_.notify_all();
  }
  bool Closed() const { return fd_ < 0; }
};

// Runs on the JS thread for each posted exit.
void CallJs(Napi::Env env, Napi::Function fn, Vcpu* v, void* data) {
  uint32_t reason = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(data));
  if (env != nullptr && !v->Closed()) {
    fn.Call({Napi::Number::New(env, reason)});
    // A throwing handler must not leave the vCPU thread waiting forever;
    // the exception itself surfaces as an uncaught exception (the TS
    // wrapper catches its own and stops the VM).
  }
  if (reason == KVM_EXIT_IO || reason == KVM_EXIT_MMIO) v->Answer();
}

}  // namespace

void InitKvmVcpu(Napi::Env env, Napi::Object exports) {
  exports.Set("KvmVcpu", Vcpu::Define(env));
}
