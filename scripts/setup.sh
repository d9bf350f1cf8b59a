#!/usr/bin/env bash
# kata-ts set-up: everything a fresh Debian 12 machine needs, each step skipped
# when already up to date, each saying what it does.
#   1. Debian packages (apt-get, only when root and something is missing)
#   2. npm packages
#   3. native addon (node-gyp), WebAssembly modules (asc), TypeScript (tsc)
#   4. guest kernel (guest/kernel/build.sh; if it fails, set-up fails)
#   5. guest image + default container rootfs (guest/image/build.sh)
#   6. the commands on PATH (/usr/local/bin, when root)
# Options: --build-only (steps 2-3), --no-guest (skip 4-5).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
export KATA_TS_CACHE="${KATA_TS_CACHE:-/var/cache/kata-ts}"
build_only=0; guest=1
for a in "$@"; do case "$a" in --build-only) build_only=1; guest=0 ;; --no-guest) guest=0 ;; esac; done
step() { echo "setup: $*"; }
t0=$(date +%s)

# 1. Debian packages ----------------------------------------------------------
pkgs=(qemu-system-x86 crun erofs-utils busybox-static linux-source-6.1 bc bison flex
      libelf-dev libssl-dev cpio xz-utils zstd xxhash lz4 containerd runc iproute2 procps
      util-linux tmux make g++ python3 containernetworking-plugins iptables)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    step "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" | grep -E '^(Setting up|Unpacking)' | sed 's/^/setup: apt: /' || true
  else
    echo "setup: missing Debian packages (run as root or install them): ${missing[*]}" >&2
  fi
fi

# 2. npm packages --------------------------------------------------------------
if [ ! -d node_modules ] || [ package.json -nt node_modules/.package-lock.json ] || { [ -f package-lock.json ] && [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  step "npm install"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
fi

# 3. builds --------------------------------------------------------------------
if [ -f native/binding.gyp ]; then
  if [ ! -f native/build/Release/kata_native.node ] || [ -n "$(find native -path native/build -prune -o -newer native/build/Release/kata_native.node -type f -print | head -1)" ]; then
    step "native addon: node-gyp rebuild"
    (cd native && npx node-gyp rebuild --loglevel=warn >/dev/null)
  fi
fi
bash scripts/build-wasm.sh
stamp=dist/.tsc-stamp
if [ ! -f "$stamp" ] || [ -n "$(find src test bench tsconfig.json -newer "$stamp" -name '*.ts' -o -newer "$stamp" -name tsconfig.json 2>/dev/null | head -1)" ]; then
  step "TypeScript: tsc"
  npx tsc -p tsconfig.json
  touch "$stamp"
fi
[ $build_only = 1 ] && exit 0

# 4-5. guest ---------------------------------------------------------------------
if [ $guest = 1 ]; then
  mkdir -p "$KATA_TS_CACHE"
  # No fallback kernel: Debian's prebuilt one gives only a bzImage, while the
  # runtime boots vmlinux, and has as modules (never loaded in our guest)
  # drivers ours builds in. A set-up that "succeeded" with it left every VM
  # test skipped and `kata-ts run` broken, so a failed build stops set-up.
  klog="$KATA_TS_CACHE/kernel-build.log"
  # Progress lines (guest/progress.sh) only for a person at a terminal: the
  # kernel build's output goes through tee, so say here whether ours is one.
  if [ -z "${KATA_TS_PROGRESS:-}" ]; then
    if [ -t 1 ]; then export KATA_TS_PROGRESS=1; else export KATA_TS_PROGRESS=0; fi
  fi
  if ! bash guest/kernel/build.sh 2>&1 | tee "$klog"; then
    echo "setup: ERROR: the guest kernel build failed (guest/kernel/build.sh); its output is in $klog" >&2
    echo "setup: the kernel tree is kept in $KATA_TS_CACHE/build/ (run make there for the full compiler output); fix the cause and run set-up again" >&2
    exit 1
  fi
  if [ ! -f "$KATA_TS_CACHE/kernel/vmlinux" ]; then
    echo "setup: ERROR: no guest kernel at $KATA_TS_CACHE/kernel/vmlinux after guest/kernel/build.sh (see $klog)" >&2
    exit 1
  fi
  bash guest/image/build.sh
fi

# 6. PATH --------------------------------------------------------------------------
if [ "$(id -u)" = 0 ] && [ -w /usr/local/bin ]; then
  for b in kata-ts kata-ctl containerd-shim-kata-ts-v2; do
    [ "$(readlink -f /usr/local/bin/$b 2>/dev/null)" = "$root/bin/$b" ] || ln -sfn "$root/bin/$b" /usr/local/bin/$b
  done
fi
t1=$(date +%s)
[ $((t1-t0)) -gt 2 ] && step "done in $((t1-t0)) s"
exit 0
