// Variable-length KVM structs, spelled out for C++. <asm/kvm.h> declares
// kvm_cpuid2 and kvm_msrs with __DECLARE_FLEX_ARRAY, which in C++ adds an
// empty member: sizeof grows (12 and 16 instead of 8), the entries move,
// and the ioctl numbers (they encode sizeof) stop matching the kernel's —
// KVM_GET_SUPPORTED_CPUID then fails with EINVAL. These mirror the C layout
// (api.rst 4.18, 4.19, 4.46): an 8-byte header followed by the entries.
#pragma once
#include <linux/kvm.h>
#include <cstdint>
#include <vector>

namespace kata {

struct KvmVarHeader { uint32_t n; uint32_t pad; };
static_assert(sizeof(KvmVarHeader) == 8, "C layout");
static_assert(sizeof(kvm_cpuid_entry2) == 40, "C layout");
static_assert(sizeof(kvm_msr_entry) == 16, "C layout");

constexpr unsigned long kKvmGetSupportedCpuid = _IOWR(KVMIO, 0x05, KvmVarHeader);
constexpr unsigned long kKvmSetCpuid2 = _IOW(KVMIO, 0x90, KvmVarHeader);
constexpr unsigned long kKvmGetMsrs = _IOWR(KVMIO, 0x88, KvmVarHeader);
constexpr unsigned long kKvmSetMsrs = _IOW(KVMIO, 0x89, KvmVarHeader);

// Header + n entries in one buffer.
template <typename Entry>
struct VarBuf {
  explicit VarBuf(uint32_t n) : bytes(sizeof(KvmVarHeader) + sizeof(Entry) * n, 0) { hdr()->n = n; }
  KvmVarHeader* hdr() { return reinterpret_cast<KvmVarHeader*>(bytes.data()); }
  Entry* at(uint32_t i) { return reinterpret_cast<Entry*>(bytes.data() + sizeof(KvmVarHeader)) + i; }
  void* ptr() { return bytes.data(); }
  std::vector<uint8_t> bytes;
};

}  // namespace kata
