// kata_native: the N-API addon for the syscalls Node lacks. Syscalls and
// threads only — no parsing, no policy (ARCHITECTURE.md, native/).
// Each area registers its functions from its own file.
#include <napi.h>

void InitFd(Napi::Env env, Napi::Object exports);
void InitMem(Napi::Env env, Napi::Object exports);
void InitSock(Napi::Env env, Napi::Object exports);
void InitFs(Napi::Env env, Napi::Object exports);
void InitKvm(Napi::Env env, Napi::Object exports);
void InitKvmVcpu(Napi::Env env, Napi::Object exports);
void InitKvmSnapshot(Napi::Env env, Napi::Object exports);
void InitVfio(Napi::Env env, Napi::Object exports);
void InitTap(Napi::Env env, Napi::Object exports);
void InitNetns(Napi::Env env, Napi::Object exports);
void InitGuestTimeRng(Napi::Env env, Napi::Object exports);
void InitExt4Resize(Napi::Env env, Napi::Object exports);
void InitPipeIo(Napi::Env env, Napi::Object exports);
void InitMount(Napi::Env env, Napi::Object exports);

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitFd(env, exports);
  InitMem(env, exports);
  InitSock(env, exports);
  InitFs(env, exports);
  InitKvm(env, exports);
  InitKvmVcpu(env, exports);
  InitKvmSnapshot(env, exports);
  InitVfio(env, exports);
  InitTap(env, exports);
  InitNetns(env, exports);
  InitGuestTimeRng(env, exports);
  InitExt4Resize(env, exports);
  InitPipeIo(env, exports);
  InitMount(env, exports);
  return exports;
}

NODE_API_MODULE(kata_native, Init)
