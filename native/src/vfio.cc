// VFIO (Documentation/driver-api/vfio.rst): container, group, device fds,
// region and irq info, type-1 IOMMU DMA map/unmap. Errors name what is
// missing (no /dev/vfio/vfio, group not viable, ...); deciding which group a
// PCI device is in (sysfs) is done in src/vmm/vfio.ts.
// Not exercised on hardware here: these machines have no VFIO devices.
#include <napi.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <cerrno>
#include <string>
#include "errors.h"
#include "kvm_args.h"

using namespace kata;

namespace {

Napi::Value Throw(Napi::Env env, const std::string& what, int err) {
  SyscallError(env, what.c_str(), err).ThrowAsJavaScriptException();
  return env.Undefined();
}

// vfioOpen(path) -> fd: /dev/vfio/vfio (container) or /dev/vfio/<group>.
Napi::Value VfioOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) { Napi::TypeError::New(env, "vfioOpen: path required").ThrowAsJavaScriptException(); return env.Undefined(); }
  std::string path = info[0].As<Napi::String>();
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return Throw(env, "open(" + path + ")", errno);
  return Napi::Number::New(env, fd);
}

// vfioIoctlArg(fd, request-name, arg): the argument-less container ioctls.
Napi::Value VfioApiVersion(const Napi::CallbackInfo& info) {
  int fd; if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  int v = ioctl(fd, VFIO_GET_API_VERSION);
  if (v < 0) return Throw(info.Env(), "ioctl(VFIO_GET_API_VERSION)", errno);
  return Napi::Number::New(info.Env(), v);
}
Napi::Value VfioCheckExtension(const Napi::CallbackInfo& info) {
  int fd; int64_t ext;
  if (!ArgFd(info, 0, &fd) || !ArgInt(info, 1, &ext, "extension")) return info.Env().Undefined();
  int v = ioctl(fd, VFIO_CHECK_EXTENSION, static_cast<unsigned long>(ext));
  if (v < 0) return Throw(info.Env(), "ioctl(VFIO_CHECK_EXTENSION)", errno);
  return Napi::Number::New(info.Env(), v);
}

// vfioGroupStatus(groupFd) -> {viable, containerSet}
Napi::Value VfioGroupStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd; if (!ArgFd(info, 0, &fd)) return env.Undefined();
  vfio_group_status s{};
  s.argsz = sizeof s;
  if (ioctl(fd, VFIO_GROUP_GET_STATUS, &s) < 0) return Throw(env, "ioctl(VFIO_GROUP_GET_STATUS)", errno);
  Napi::Object o = Napi::Object::New(env);
  o.Set("viable", Napi::Boolean::New(env, s.flags & VFIO_GROUP_FLAGS_VIABLE));
  o.Set("containerSet", Napi::Boolean::New(env, s.flags & VFIO_GROUP_FLAGS_CONTAINER_SET));
  return o;
}

Napi::Value VfioGroupSetContainer(const Napi::CallbackInfo& info) {
  int g, c;
  if (!ArgFd(info, 0, &g) || !ArgFd(info, 1, &c)) return info.Env().Undefined();
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) < 0) return Throw(info.Env(), "ioctl(VFIO_GROUP_SET_CONTAINER)", errno);
  return info.Env().Undefined();
}

Napi::Value VfioSetIommuType1(const Napi::CallbackInfo& info) {
  int c; if (!ArgFd(info, 0, &c)) return info.Env().Undefined();
  if (ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) return Throw(info.Env(), "ioctl(VFIO_SET_IOMMU, TYPE1v2)", errno);
  return info.Env().Undefined();
}

// vfioGroupDeviceFd(groupFd, "0000:00:04.0") -> device fd
Napi::Value VfioGroupDeviceFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int g; if (!ArgFd(info, 0, &g)) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsString()) { Napi::TypeError::New(env, "vfioGroupDeviceFd: device name required").ThrowAsJavaScriptException(); return env.Undefined(); }
  std::string name = info[1].As<Napi::String>();
  int fd = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, name.c_str());
  if (fd < 0) return Throw(env, "ioctl(VFIO_GROUP_GET_DEVICE_FD, " + name + ")", errno);
  return Napi::Number::New(env, fd);
}

// vfioDeviceInfo(deviceFd) -> {flags, numRegions, numIrqs}
Napi::Value VfioDeviceInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd; if (!ArgFd(info, 0, &fd)) return env.Undefined();
  vfio_device_info d{};
  d.argsz = sizeof d;
  if (ioctl(fd, VFIO_DEVICE_GET_INFO, &d) < 0) return Throw(env, "ioctl(VFIO_DEVICE_GET_INFO)", errno);
  Napi::Object o = Napi::Object::New(env);
  o.Set("flags", d.flags); o.Set("numRegions", d.num_regions); o.Set("numIrqs", d.num_irqs);
  return o;
}

// vfioRegionInfo(deviceFd, index) -> {flags, size: bigint, offset: bigint}
Napi::Value VfioRegionInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd; int64_t idx;
  if (!ArgFd(info, 0, &fd) || !ArgInt(info, 1, &idx, "index")) return env.Undefined();
  vfio_region_info r{};
  r.argsz = sizeof r;
  r.index = static_cast<uint32_t>(idx);
  if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &r) < 0) return Throw(env, "ioctl(VFIO_DEVICE_GET_REGION_INFO)", errno);
  Napi::Object o = Napi::Object::New(env);
  o.Set("flags", r.flags);
  o.Set("size", Napi::BigInt::New(env, static_cast<uint64_t>(r.size)));
  o.Set("offset", Napi::BigInt::New(env, static_cast<uint64_t>(r.offset)));
  return o;
}

// vfioIrqInfo(deviceFd, index) -> {flags, count}
Napi::Value VfioIrqInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd; int64_t idx;
  if (!ArgFd(info, 0, &fd) || !ArgInt(info, 1, &idx, "index")) return env.Undefined();
  vfio_irq_info r{};
  r.argsz = sizeof r;
  r.index = static_cast<uint32_t>(idx);
  if (ioctl(fd, VFIO_DEVICE_GET_IRQ_INFO, &r) < 0) return Throw(env, "ioctl(VFIO_DEVICE_GET_IRQ_INFO)", errno);
  Napi::Object o = Napi::Object::New(env);
  o.Set("flags", r.flags); o.Set("count", r.count);
  return o;
}

// vfioDmaMap(containerFd, iova, hostAddr, size) / vfioDmaUnmap(containerFd, iova, size)
Napi::Value VfioDmaMap(const Napi::CallbackInfo& info) {
  int fd; uint64_t iova, vaddr, size;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, &iova, "iova") || !ArgU64(info, 2, &vaddr, "hostAddr") || !ArgU64(info, 3, &size, "size")) return info.Env().Undefined();
  vfio_iommu_type1_dma_map m{};
  m.argsz = sizeof m;
  m.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  m.vaddr = vaddr; m.iova = iova; m.size = size;
  if (ioctl(fd, VFIO_IOMMU_MAP_DMA, &m) < 0) return Throw(info.Env(), "ioctl(VFIO_IOMMU_MAP_DMA)", errno);
  return info.Env().Undefined();
}
Napi::Value VfioDmaUnmap(const Napi::CallbackInfo& info) {
  int fd; uint64_t iova, size;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, &iova, "iova") || !ArgU64(info, 2, &size, "size")) return info.Env().Undefined();
  vfio_iommu_type1_dma_unmap m{};
  m.argsz = sizeof m;
  m.iova = iova; m.size = size;
  if (ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &m) < 0) return Throw(info.Env(), "ioctl(VFIO_IOMMU_UNMAP_DMA)", errno);
  return info.Env().Undefined();
}

}  // namespace

void InitVfio(Napi::Env env, Napi::Object exports) {
  exports.Set("vfioOpen", Napi::Function::New(env, VfioOpen));
  exports.Set("vfioApiVersion", Napi::Function::New(env, VfioApiVersion));
  exports.Set("vfioCheckExtension", Napi::Function::New(env, VfioCheckExtension));
  exports.Set("vfioGroupStatus", Napi::Function::New(env, VfioGroupStatus));
  exports.Set("vfioGroupSetContainer", Napi::Function::New(env, VfioGroupSetContainer));
  exports.Set("vfioSetIommuType1", Napi::Function::New(env, VfioSetIommuType1));
  exports.Set("vfioGroupDeviceFd", Napi::Function::New(env, VfioGroupDeviceFd));
  exports.Set("vfioDeviceInfo", Napi::Function::New(env, VfioDeviceInfo));
  exports.Set("vfioRegionInfo", Napi::Function::New(env, VfioRegionInfo));
  exports.Set("vfioIrqInfo", Napi::Function::New(env, VfioIrqInfo));
  exports.Set("vfioDmaMap", Napi::Function::New(env, VfioDmaMap));
  exports.Set("vfioDmaUnmap", Napi::Function::New(env, VfioDmaUnmap));
}
