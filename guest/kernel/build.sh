#!/usr/bin/env bash
# Builds the kata-ts guest kernel from Debian's linux-source-6.1 with the
# config fragment beside this script. Output lands in $CACHE/kernel-<hash>/
# (vmlinux for PVH boot, bzImage, .config, build-time.txt), keyed by the hash
# of the fragment, this script and the source tarball, so a rebuild happens
# only when one of them changes. Prints progress; exits non-zero on failure
# (the caller then falls back to Debian's cloud kernel and says so).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${KATA_TS_CACHE:-/var/cache/kata-ts}"
src_tar="${KATA_TS_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}"
[ -f "$src_tar" ] || { echo "kernel: $src_tar missing (apt-get install linux-source-6.1)" >&2; exit 2; }
hash="$( (cat "$here/kata-ts.config" "$here/build.sh"; stat -c '%s %Y' "$src_tar") | sha256sum | cut -c1-16)"
out="$cache/kernel-$hash"
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
  echo "kernel: up to date ($out)"; ln -sfn "kernel-$hash" "$cache/kernel"; exit 0
fi
work="$cache/build/linux-$hash"
mkdir -p "$cache/build"
start=$(date +%s)
if [ ! -f "$work/Makefile" ]; then
  echo "kernel: unpacking $(basename "$src_tar") ..."
  rm -rf "$work.tmp" && mkdir -p "$work.tmp"
  tar -xf "$src_tar" -C "$work.tmp" --strip-components=1
  mv "$work.tmp" "$work"
fi
cd "$work"
echo "kernel: configuring (tinyconfig + guest/kernel/kata-ts.config)"
make -s tinyconfig >/dev/null
KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m .config "$here/kata-ts.config" >/dev/null
make -s olddefconfig >/dev/null
# Every option we ask for must have survived olddefconfig; a silently dropped
# dependency would give a guest that cannot run Node or crun.
missing=0
while IFS= read -r line; do
  case "$line" in CONFIG_*=y) grep -qx "$line" .config || { echo "kernel: option not applied: $line" >&2; missing=1; } ;; esac
done < "$here/kata-ts.config"
[ $missing = 0 ] || { echo "kernel: config fragment not satisfiable" >&2; exit 3; }
jobs=$(nproc)
total=$(grep -c '=y' .config)
echo "kernel: building vmlinux + bzImage with -j$jobs (about 5 min on 2 cores)"
n=0
make -j"$jobs" vmlinux bzImage 2>&1 | while IFS= read -r l; do
  case "$l" in
    *"  CC "*|*"  AS "*|*"  LD "*|*"  AR "*) n=$((n+1)); if [ $((n % 200)) = 0 ]; then echo "kernel: ... $n objects compiled"; fi ;;
    *error*|*Error*) echo "$l" ;;
  esac
done
[ -f vmlinux ] && [ -f arch/x86/boot/bzImage ] || { echo "kernel: build failed" >&2; exit 4; }
mkdir -p "$out.tmp"
cp vmlinux arch/x86/boot/bzImage .config "$out.tmp/"
strip --strip-debug "$out.tmp/vmlinux" 2>/dev/null || true
end=$(date +%s)
echo "$((end-start))" > "$out.tmp/build-seconds"
make -s kernelrelease > "$out.tmp/release"
rm -rf "$out"; mv "$out.tmp" "$out"
ln -sfn "kernel-$hash" "$cache/kernel"
echo "kernel: built $(cat "$out/release") in $((end-start)) s -> $out"
