#!/usr/bin/env bash
# Builds the kata-ts guest kernel from Debian's linux-source-6.1 with the
# config fragment beside this script. Output lands in $CACHE/kernel-<hash>/
# (vmlinux for PVH boot, bzImage, .config, build-time.txt), keyed by the hash
# of the fragment, this script and the source tarball, so a rebuild happens
# only when one of them changes. Prints progress; exits non-zero on failure
# (set-up stops there: there is no fallback kernel).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# Lines ending in "# progress" only draw progress (guest/progress.sh): the cache key # progress
# below leaves them out, so they never force a kernel rebuild. # progress
. "$here/../progress.sh" # progress
cache="${KATA_TS_CACHE:-/var/cache/kata-ts}"
src_tar="${KATA_TS_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}"
[ -f "$src_tar" ] || { echo "kernel: $src_tar missing (apt-get install linux-source-6.1)" >&2; exit 2; }
hash="$( (cat "$here/kata-ts.config" "$here/build.sh"; stat -c '%s %Y' "$src_tar") | sha256sum | cut -c1-16)"
hash="$( (cat "$here/kata-ts.config"; grep -v ' # progress$' "$here/build.sh"; stat -c '%s %Y' "$src_tar") | sha256sum | cut -c1-16)" # progress
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
  size=$(xz --robot --list "$src_tar" 2>/dev/null | awk '$1=="totals"{print $5}') # progress
  if [ "$KATA_TS_PROGRESS" = 1 ] && [ -n "$size" ]; then # progress
    # tar checkpoints (10 KiB records) against xz's uncompressed size; tar runs the action with /bin/sh # progress
    export KATA_TS_PROGRESS; t0=$(date +%s) # progress
    tar -xf "$src_tar" -C "$work.tmp" --strip-components=1 --checkpoint=2500 --checkpoint-action=exec="bash -c '. \"$here/../progress.sh\"; progress \"kernel: unpacking\" \$(( TAR_CHECKPOINT * 10240 / 1048576 )) $(( size / 1048576 )) $t0 MiB' 2>/dev/null; true" # progress
    _progress_shown=1; progress_done # progress
  else # progress
  tar -xf "$src_tar" -C "$work.tmp" --strip-components=1
  fi # progress
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
# Objects to build: the last complete build's count, else the one measured for # progress
# kata-ts.config on linux-source-6.1 (1483); percent and time left from those done. # progress
ktotal=$(cat "$cache/build/kernel-objects" 2>/dev/null || echo 1483); bstart=$(date +%s); m=0 # progress
echo "kernel: building vmlinux + bzImage with -j$jobs (about 5 min on 2 cores)"
n=0
make -j"$jobs" vmlinux bzImage 2>&1 | while IFS= read -r l; do
  case "$l" in *"  CC "*|*"  AS "*|*"  LD "*|*"  AR "*) m=$((m+1)); [ $m -gt "$ktotal" ] && ktotal=$m; progress "kernel: compiling" "$m" "$ktotal" "$bstart" objects; echo "$m" > "$cache/build/kernel-objects.tmp"; [ $((m % 200)) = 0 ] && progress_done ;; *error*|*Error*) progress_done ;; esac # progress
  case "$l" in
    *"  CC "*|*"  AS "*|*"  LD "*|*"  AR "*) n=$((n+1)); if [ $((n % 200)) = 0 ]; then echo "kernel: ... $n objects compiled"; fi ;;
    *error*|*Error*) echo "$l" ;;
  esac
done
[ "$KATA_TS_PROGRESS" = 1 ] && _progress_shown=1; progress_done # progress
[ -f vmlinux ] && [ -f arch/x86/boot/bzImage ] || { echo "kernel: build failed" >&2; exit 4; }
if [ "$(cat "$cache/build/kernel-objects.tmp" 2>/dev/null || echo 0)" -gt 1000 ]; then mv "$cache/build/kernel-objects.tmp" "$cache/build/kernel-objects"; else rm -f "$cache/build/kernel-objects.tmp"; fi # progress
mkdir -p "$out.tmp"
cp vmlinux arch/x86/boot/bzImage .config "$out.tmp/"
strip --strip-debug "$out.tmp/vmlinux" 2>/dev/null || true
end=$(date +%s)
echo "$((end-start))" > "$out.tmp/build-seconds"
make -s kernelrelease > "$out.tmp/release"
rm -rf "$out"; mv "$out.tmp" "$out"
ln -sfn "kernel-$hash" "$cache/kernel"
echo "kernel: built $(cat "$out/release") in $((end-start)) s -> $out"
