/**
 * Linux dev_t → major/minor, as glibc's major()/minor() decode it (the
 * 64-bit encoding: major in bits 8-19 and 32-63, minor in bits 0-7 and
 * 20-51). Node's fs.Stats gives rdev but no major()/minor(); host code
 * (a container's linux.devices, our virtio-blk on a host disk) and the
 * agent (the guest node of a hotplugged disk) share this one decoder.
 */
export function splitDev(rdev: number | bigint): { major: number; minor: number } {
  const d = BigInt(rdev);
  return {
    major: Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn)),
    minor: Number((d & 0xffn) | ((d >> 12n) & ~0xffn)),
  };
}
