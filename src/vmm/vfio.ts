/**
 * VFIO device assignment, the host side (Documentation/driver-api/vfio.rst
 * "VFIO Usage Example"): find the device's IOMMU group in sysfs, open the
 * container and group, check the group is viable (every device in it bound
 * to vfio-pci or unbound), attach it to a type-1 IOMMU container, get the
 * device fd, and read its region and irq info. Errors say what is missing.
 * Not exercised on hardware: these machines have no VFIO devices; tests
 * cover the error paths only. Guest-side wiring (BARs into the MMIO hole,
 * MSI via irqfd) is not written yet.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VmmError } from './errors';
import { kvmNative } from './kvm/native';

const VFIO_API_VERSION = 0;
const VFIO_TYPE1v2_IOMMU = 3;

export interface VfioDevice {
  bdf: string;
  group: number;
  containerFd: number;
  groupFd: number;
  deviceFd: number;
  regions: Array<{ index: number; flags: number; size: bigint; offset: bigint }>;
  irqs: Array<{ index: number; flags: number; count: number }>;
  close(): void;
}

export function openVfioDevice(bdf: string, sysfs = '/sys/bus/pci/devices'): VfioDevice {
  if (!/^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i.test(bdf)) throw new VmmError('vfio', `"${bdf}" is not a PCI address (dddd:bb:dd.f)`);
  const dev = path.join(sysfs, bdf);
  if (!fs.existsSync(dev)) throw new VmmError('vfio', `no PCI device ${bdf} on this host`);
  let group: number;
  try {
    group = Number(path.basename(fs.readlinkSync(path.join(dev, 'iommu_group'))));
  } catch {
    throw new VmmError('vfio', `${bdf} has no IOMMU group: the IOMMU is off (intel_iommu=on / amd_iommu) or the platform has none`);
  }
  let driver = '';
  try { driver = path.basename(fs.readlinkSync(path.join(dev, 'driver'))); } catch { /* unbound */ }
  if (driver !== 'vfio-pci') throw new VmmError('vfio', `${bdf} is ${driver ? `bound to ${driver}` : 'not bound to any driver'}; bind it to vfio-pci first`);
  const n = kvmNative();
  const opened: number[] = [];
  const wrap = <T>(what: string, f: () => T): T => {
    try { return f(); } catch (cause) {
      for (const fd of opened.reverse()) n.closeFd(fd);
      throw new VmmError('vfio', `${bdf}: ${what}: ${(cause as Error).message}`, { cause });
    }
  };
  const containerFd = wrap('open the VFIO container (/dev/vfio/vfio; is the vfio module loaded?)', () => n.vfioOpen('/dev/vfio/vfio'));
  opened.push(containerFd);
  wrap('container API version', () => { if (n.vfioApiVersion(containerFd) !== VFIO_API_VERSION) throw new Error('unknown VFIO API version'); });
  wrap('type-1 IOMMU support', () => { if (!n.vfioCheckExtension(containerFd, VFIO_TYPE1v2_IOMMU)) throw new Error('no VFIO_TYPE1v2_IOMMU'); });
  const groupFd = wrap(`open group /dev/vfio/${group}`, () => n.vfioOpen(`/dev/vfio/${group}`));
  opened.push(groupFd);
  wrap('group viability', () => { if (!n.vfioGroupStatus(groupFd).viable) throw new Error(`IOMMU group ${group} is not viable: bind every device in it to vfio-pci`); });
  wrap('attach group to container', () => n.vfioGroupSetContainer(groupFd, containerFd));
  wrap('set the type-1 IOMMU', () => n.vfioSetIommuType1(containerFd));
  const deviceFd = wrap('get the device fd', () => n.vfioGroupDeviceFd(groupFd, bdf));
  opened.push(deviceFd);
  const info = wrap('device info', () => n.vfioDeviceInfo(deviceFd));
  const regions = wrap('region info', () => Array.from({ length: info.numRegions }, (_, i) => ({ index: i, ...n.vfioRegionInfo(deviceFd, i) })));
  const irqs = wrap('irq info', () => Array.from({ length: info.numIrqs }, (_, i) => ({ index: i, ...n.vfioIrqInfo(deviceFd, i) })));
  let closed = false;
  return {
    bdf, group, containerFd, groupFd, deviceFd, regions, irqs,
    close: () => { if (closed) return; closed = true; for (const fd of [deviceFd, groupFd, containerFd]) n.closeFd(fd); },
  };
}
