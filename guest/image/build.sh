#!/usr/bin/env bash
# Builds the kata-ts guest image and the default container rootfs.
#
# Guest image: a read-only EROFS root filesystem (uncompressed) booted as /dev/vda:
#   /sbin/kata-init (PID 1, guest/init/kata-init.c, static), /sbin/kata-pty
#   (debug console pty helper, guest/init/kata-pty.c), /usr/bin/node and
#   its libraries, crun and its libraries, busybox (debug console), and the
#   agent bundle at /opt/kata-ts (the agent as one esbuild file, its V8
#   startup snapshot made in a guest (agent-snapshot.sh), the native addon,
#   proto/agent.proto, and only the node_modules it loads: winston).
#   EROFS on virtio-blk rather than an initrd: nothing is unpacked at boot, the
#   kernel reads only the pages Node actually touches (see README performance).
# Default container rootfs: busybox-static with its applets, /etc/passwd and
#   /etc/group, at $CACHE/rootfs/busybox.
# Rebuilt only when the staged content's hash changes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
. "$here/../progress.sh"
cache="${KATA_TS_CACHE:-/var/cache/kata-ts}"
mkdir -p "$cache/build"
# a private staging dir: concurrent set-ups (two checkouts, CI) must not clobber each other
stage="$(mktemp -d "$cache/build/image-stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

copy_with_libs() { # copy a binary and the shared libraries ldd names, same paths
  local bin="$1" dest="${2:-$1}"
  mkdir -p "$stage$(dirname "$dest")"; cp -L "$bin" "$stage$dest"
  ldd "$bin" 2>/dev/null | grep -oE '/[^ ]+' | while read -r lib; do
    [ -f "$lib" ] || continue
    mkdir -p "$stage$(dirname "$lib")"; [ -f "$stage$lib" ] || cp -L "$lib" "$stage$lib"
  done
}

echo "image: staging guest root filesystem"
for d in proc sys dev run tmp etc root sbin bin usr/bin usr/sbin lib64 var/run; do mkdir -p "$stage/$d"; done
gcc -static -O2 -Wall -o "$stage/sbin/kata-init" "$repo/guest/init/kata-init.c"
gcc -static -O2 -Wall -o "$stage/sbin/kata-pty" "$repo/guest/init/kata-pty.c" # debug console pty (kata-ctl exec)
copy_with_libs "$(readlink -f "$(command -v node)")" /usr/bin/node
copy_with_libs "$(command -v crun)" /usr/bin/crun
cp /bin/busybox "$stage/bin/busybox"
for a in $("$stage/bin/busybox" --list); do [ -e "$stage/bin/$a" ] || ln -s busybox "$stage/bin/$a"; done
ln -sf ../../bin/busybox "$stage/usr/bin/env" 2>/dev/null || true
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$stage/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$stage/etc/group"
echo kata-ts > "$stage/etc/hostname"
ln -sfn /run/kata-ts/resolv.conf "$stage/etc/resolv.conf" # written by the agent from the sandbox DNS (src/agent/network.ts)

echo "image: staging agent bundle (/opt/kata-ts)"
agent="$stage/opt/kata-ts"; mkdir -p "$agent/dist/src"
for d in agent protocols common; do [ -d "$repo/dist/src/$d" ] && cp -r "$repo/dist/src/$d" "$agent/dist/src/"; done
mkdir -p "$agent/proto"; cp "$repo/proto/agent.proto" "$agent/proto/" # the agent's only schema (read at start)
cp "$repo/package.json" "$agent/"
[ -f "$repo/native/build/Release/kata_native.node" ] && { mkdir -p "$agent/native/build/Release"; cp "$repo/native/build/Release/kata_native.node" "$agent/native/build/Release/"; }
# node_modules: only what the agent requires at run time. Its transport
# (ttrpc, our protobuf codec) needs no package; winston is loaded only for
# agent.log=debug (src/agent/main.ts) and is kept out of the bundle below, so
# it and its dependencies are the whole list (was: every production
# dependency of the project — grpc-js, protobufjs, yargs, ...).
AGENT_PACKAGES="winston"
(cd "$repo" && node -e '
  const fs = require("fs"), path = require("path"); const seen = new Set();
  const find = (name, from) => { for (let d = from; ; d = path.dirname(d)) { const p = path.join(d, "node_modules", name); if (fs.existsSync(path.join(p, "package.json"))) return p; if (d === path.dirname(d)) return undefined; } };
  const walk = (name, from) => { const dir = find(name, from); if (!dir || seen.has(dir)) return; seen.add(dir);
    const pj = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")); for (const d of Object.keys(pj.dependencies || {})) walk(d, dir); };
  for (const n of process.argv.slice(1)) walk(n, process.cwd());
  for (const d of seen) console.log(path.relative(process.cwd(), d));' $AGENT_PACKAGES) | while read -r rel; do
  [ -d "$agent/$rel" ] && continue
  mkdir -p "$agent/$(dirname "$rel")"; cp -r "$repo/$rel" "$agent/$rel"
done
# The agent as one file (src/agent/boot.ts says why): esbuild bundles boot.js
# and all it imports over the staged boot.js; the native addon stays a
# separate .node file, loaded by path at run time. KATA_TS_AGENT_BUNDLE=0
# keeps the separate files (to compare, or to debug with readable paths).
esbuild="$repo/node_modules/.bin/esbuild"
if [ "${KATA_TS_AGENT_BUNDLE:-1}" = 0 ]; then
  echo "image: agent bundling off (KATA_TS_AGENT_BUNDLE=0): module files loaded one by one"
elif [ -x "$esbuild" ] && "$esbuild" "$repo/dist/src/agent/boot.js" --bundle --platform=node --target=node20 \
     --external:'*.node' $(for p in $AGENT_PACKAGES; do printf -- '--external:%s ' "$p"; done) --log-level=error --outfile="$agent/dist/src/agent/boot.js" --allow-overwrite; then
  echo "image: agent bundled into one file ($(( $(stat -c %s "$agent/dist/src/agent/boot.js") / 1024 )) KiB, esbuild)"
  # Its V8 startup snapshot, made in a guest (agent-snapshot.sh says why):
  # the agent's modules are evaluated at build time instead of at each boot.
  # KATA_TS_AGENT_SNAPSHOT=0 leaves it out (to compare).
  if [ "${KATA_TS_AGENT_SNAPSHOT:-1}" != 0 ]; then
    bash "$here/agent-snapshot.sh" "$stage" "$cache" || echo "image: agent snapshot failed, the agent loads its bundle instead"
  else
    echo "image: agent snapshot off (KATA_TS_AGENT_SNAPSHOT=0)"
  fi
else
  echo "image: esbuild unavailable or failed: the agent loads its module files one by one (slower boot)"
fi
find "$agent" -name '*.map' -delete; find "$agent" -name '*.md' -delete

rootfs="$cache/rootfs/busybox"
if [ ! -x "$rootfs/bin/busybox" ] || [ /bin/busybox -nt "$rootfs/bin/busybox" ]; then
  echo "image: default container rootfs (busybox) -> $rootfs"
  rm -rf "$rootfs"; mkdir -p "$rootfs"/{bin,etc,proc,sys,dev,tmp,root,home,var,run}
  cp /bin/busybox "$rootfs/bin/busybox"
  for a in $("$rootfs/bin/busybox" --list); do [ -e "$rootfs/bin/$a" ] || ln -s busybox "$rootfs/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/:/bin/false\nuser:x:1000:1000:user:/home:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$rootfs/etc/passwd"
  printf 'root:x:0:\ndaemon:x:1:\nusers:x:100:user\nuser:x:1000:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
  chmod 1777 "$rootfs/tmp"
fi
# The default container rootfs also goes into the guest image (issue 16,
# cold path): kata-ts run's default container then runs on an overlay of
# /opt/kata-ts/rootfs/busybox in the guest's own root (DAX-mapped), with no
# disk of its own: no EROFS image built per run, no vhost-user-blk device,
# backend, PCI probe or mount of it (src/runtime/guest-rootfs.ts). The
# marker beside the image (written below) tells the host the copy is there.
mkdir -p "$stage/opt/kata-ts/rootfs"; cp -a "$rootfs" "$stage/opt/kata-ts/rootfs/busybox"

# rootfs.erofs is uncompressed: under TCG the guest's LZ4 decompression of
# every page Node touches is emulated instruction by instruction, and the
# same boot reached the agent ~0.75 s (guest time, QEMU -icount) sooner from
# an uncompressed image (measured 2026-12-01: 3.16-3.18 s against 3.91-4.18
# s; README Performance). The price: 117 MiB on disk instead of 70 (the
# host's page cache holds only what guests read). KATA_TS_IMAGE_COMPRESS=lz4
# builds it compressed, to compare.
compress="${KATA_TS_IMAGE_COMPRESS:-none}"
case "$compress" in none) mkfs_z=() ;; lz4) mkfs_z=(-zlz4) ;; *) echo "image: KATA_TS_IMAGE_COMPRESS must be none or lz4, not '$compress'" >&2; exit 1 ;; esac
hash="$( { (cd "$stage" && find . -printf '%p %s %m %l\n' | sort); echo "compress=$compress"; } | sha256sum | cut -c1-16)"
content="$(cd "$stage" && find . -type f -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16)"
out="$cache/image-$hash-$content"
if [ -f "$out/rootfs.erofs" ]; then
  echo "image: up to date ($out)"
else
  echo "image: mkfs.erofs ${mkfs_z[*]:-(uncompressed)} ($(du -sm "$stage" | cut -f1) MiB staged)"
  tmp="$(mktemp -d "$out.tmp.XXXXXX")"; chmod 755 "$tmp"
  t0=$(date +%s%N)
  # Progress (on a terminal, guest/progress.sh): time so far against the last build's.
  est=$(cat "$cache/image-build-ms" 2>/dev/null || echo 0)
  mkfs.erofs "${mkfs_z[@]}" -T0 --all-root "$tmp/rootfs.erofs" "$stage" >/dev/null &
  mkfs_pid=$!
  if [ "$KATA_TS_PROGRESS" = 1 ] && [ "$est" -gt 0 ]; then
    s0=$(date +%s)
    while kill -0 "$mkfs_pid" 2>/dev/null; do
      progress "image: mkfs.erofs" $(( ($(date +%s%N) - t0) / 1000000 )) "$est" "$s0" ms
      sleep 0.5
    done
    progress_done
  fi
  wait "$mkfs_pid"
  t1=$(date +%s%N)
  echo $(( (t1-t0)/1000000 )) > "$cache/image-build-ms"
  echo "image: built $(du -m "$tmp/rootfs.erofs" | cut -f1) MiB in $(( (t1-t0)/1000000 )) ms"
  if [ -f "$out/rootfs.erofs" ]; then rm -rf "$tmp"; else rm -rf "$out"; mv "$tmp" "$out"; fi
fi
# The DAX image (issue 13): the same tree uncompressed — EROFS maps only
# uncompressed (flat) files with DAX — behind an NVDIMM pfn info block and
# padded to 128 MiB (src/hypervisor/dax-image.ts says why), for QEMU's nvdimm.
# Its pages are then one copy in the host page cache for every sandbox
# (README "Memory density").
# Every file FLAT_PLAIN (-E noinline_data): EROFS gives S_DAX only to that
# layout, and mkfs's default packs each file's tail inline (FLAT_INLINE), so
# the guest read Node through its page cache although the mount said dax
# (measured: guest Cached 49 MiB either way; 1.7 MiB with plain files). The
# stamp (.blk128: padded to the guest's 128 MiB memory block, so DIMMs
# hotplugged behind it can be onlined) rebuilds images made before; the new
# file replaces the old by rename, never in place (running VMs map it).
if [ ! -f "$out/rootfs-dax.erofs" ] || [ ! -f "$out/rootfs-dax.blk128" ]; then
  t0=$(date +%s%N)
  mkfs.erofs -T0 --all-root -Enoinline_data "$out/rootfs-flat.erofs.tmp" "$stage" >/dev/null
  node "$repo/dist/src/hypervisor/dax-image.js" "$out/rootfs-flat.erofs.tmp" "$out/rootfs-dax.erofs.tmp.$$" >/dev/null
  mv -f "$out/rootfs-dax.erofs.tmp.$$" "$out/rootfs-dax.erofs"
  rm -f "$out/rootfs-dax.plain"
  touch "$out/rootfs-dax.blk128"
  rm -f "$out/rootfs-flat.erofs.tmp"
  echo "image: DAX image (uncompressed, pfn info block) $(du -m --apparent-size "$out/rootfs-dax.erofs" | cut -f1) MiB in $(( ($(date +%s%N)-t0)/1000000 )) ms"
fi
# The guest copy of the default container rootfs (above): its path in the image.
[ -f "$out/default-rootfs.guest" ] || echo /opt/kata-ts/rootfs/busybox > "$out/default-rootfs.guest"
ln -sfn "$(basename "$out")" "$cache/image.new.$$" && mv -T "$cache/image.new.$$" "$cache/image"
# keep only the newest few images
ls -dt "$cache"/image-* 2>/dev/null | grep -v '\.tmp\.' | tail -n +6 | xargs -r rm -rf

