#!/usr/bin/env bash
# Fallback guest kernel: Debian's prebuilt cloud kernel, used only when our own
# build fails. It lacks virtio-mmio cmdline devices and 9p, so only the QEMU
# PCI machine works with it; the caller says so.
set -euo pipefail
cache="${KATA_TS_CACHE:-/var/cache/kata-ts}"
out="$cache/kernel-debian-cloud"
if [ ! -f "$out/bzImage" ]; then
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -q 'linux-image-cloud-amd64' >/dev/null && dpkg-deb -x linux-image-cloud-amd64*.deb x)
  dep="$(dpkg-deb -f "$tmp"/linux-image-cloud-amd64*.deb Depends | sed 's/[ ,(].*//')"
  (cd "$tmp" && apt-get download -q "$dep" >/dev/null && dpkg-deb -x "$dep"*.deb x)
  mkdir -p "$out"; cp "$tmp"/x/boot/vmlinuz-* "$out/bzImage"
  basename "$tmp"/x/boot/vmlinuz-* | sed 's/^vmlinuz-//' > "$out/release"
  echo fallback > "$out/build-seconds"
fi
ln -sfn kernel-debian-cloud "$cache/kernel"
echo "kernel: using Debian's cloud kernel $(cat "$out/release") (fallback)"
