// Argument helpers shared by the KVM/VFIO/guest-memory files: read numbers
// and bigints from JS with type checks, so a wrong call is a TypeError in JS
// rather than a garbage ioctl argument.
#pragma once
#include <napi.h>
#include <cstdint>
#include <string>

namespace kata {

inline bool ArgInt(const Napi::CallbackInfo& info, size_t i, int64_t* out, const char* what) {
  Napi::Env env = info.Env();
  if (i < info.Length() && info[i].IsNumber()) {
    double d = info[i].As<Napi::Number>().DoubleValue();
    *out = static_cast<int64_t>(d);
    if (static_cast<double>(*out) == d) return true;
  } else if (i < info.Length() && info[i].IsBigInt()) {
    bool lossless = true;
    *out = info[i].As<Napi::BigInt>().Int64Value(&lossless);
    if (lossless) return true;
  }
  Napi::TypeError::New(env, std::string(what) + ": expected an integer").ThrowAsJavaScriptException();
  return false;
}

// u64 from a bigint or a safe-integer number (guest-physical addresses, MSR values).
inline bool ArgU64(const Napi::CallbackInfo& info, size_t i, uint64_t* out, const char* what) {
  if (i < info.Length() && info[i].IsBigInt()) {
    bool lossless = true;
    *out = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (lossless) return true;
  } else if (i < info.Length() && info[i].IsNumber()) {
    double d = info[i].As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= 9007199254740991.0 && static_cast<double>(static_cast<uint64_t>(d)) == d) {
      *out = static_cast<uint64_t>(d);
      return true;
    }
  }
  Napi::TypeError::New(info.Env(), std::string(what) + ": expected a non-negative integer or bigint").ThrowAsJavaScriptException();
  return false;
}

inline bool ValU64(Napi::Env env, Napi::Value v, uint64_t* out, const char* what) {
  if (v.IsBigInt()) {
    bool lossless = true;
    *out = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (lossless) return true;
  } else if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= 9007199254740991.0) { *out = static_cast<uint64_t>(d); return true; }
  }
  Napi::TypeError::New(env, std::string(what) + ": expected a non-negative integer or bigint").ThrowAsJavaScriptException();
  return false;
}

inline bool ArgFd(const Napi::CallbackInfo& info, size_t i, int* fd) {
  int64_t v;
  if (!ArgInt(info, i, &v, "fd")) return false;
  if (v < 0 || v > 0x7fffffff) {
    Napi::TypeError::New(info.Env(), "fd: out of range").ThrowAsJavaScriptException();
    return false;
  }
  *fd = static_cast<int>(v);
  return true;
}

// The entry of `table` (structs with a `const char* name`) named by the JS
// string `v`; else a TypeError listing the names, and nullptr. Used for the
// snapshot state kinds (kvm_vcpu.cc, kvm_snapshot.cc).
template <typename T, size_t N>
const T* FindByName(Napi::Env env, Napi::Value v, const T (&table)[N], const char* what) {
  if (v.IsString()) {
    std::string k = v.As<Napi::String>().Utf8Value();
    for (const T& x : table) if (k == x.name) return &x;
  }
  std::string names;
  for (const T& x : table) names += (names.empty() ? "" : ", ") + std::string(x.name);
  Napi::TypeError::New(env, std::string(what) + " must be one of " + names).ThrowAsJavaScriptException();
  return nullptr;
}

}  // namespace kata
