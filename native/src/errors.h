// Syscall errors become JS Errors carrying the syscall name and errno text
// ("recvmsg: Bad file descriptor"), with .syscall and .errno set, so callers
// can report what failed without guessing.
#pragma once
#include <napi.h>
#include <cerrno>
#include <cstring>
#include <string>

inline Napi::Error SyscallError(Napi::Env env, const char* syscall, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + ": " + std::strerror(err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.Set("errno", Napi::Number::New(env, err));
  return e;
}
