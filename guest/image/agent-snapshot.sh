#!/usr/bin/env bash
# The guest agent's V8 startup snapshot (src/agent/boot.ts says what it
# holds), made inside a guest: usage: agent-snapshot.sh <stage> <cache>.
#
# V8 refuses a startup blob made under other CPU features ("built with a
# different version of V8 or with different V8 configurations": the check
# hashes the features it detected), and the guest's emulated `-cpu max` is not
# the host's CPU, so the blob cannot be made on the host. Pinning the features
# with --no-enable-avx & co. does not help either: the tags still differed
# (measured). So this boots the staged tree once under QEMU/TCG with
# init=/sbin/kata-agent-snapshot (the guest half, written below), which runs
# Node's --build-snapshot on the agent bundle with the very node binary and
# NODE_OPTIONS the agent runs with, checks the blob by starting from it, and
# writes it, with the guest CPU's flags line, as a tar onto a scratch disk.
# The blob goes into the image at /opt/kata-ts/agent.blob (+ agent.blob.cpu);
# kata-init uses it only on the CPU it was made on (guest/init/kata-init.c).
#
# Cached by what the blob depends on: the agent tree, the node binary, the
# kernel and the QEMU version. Any failure leaves the image without a blob
# (the agent then loads its bundle, as before) and says why on one line.
set -euo pipefail
stage="$1" cache="$2"
agent="$stage/opt/kata-ts"
kernel="$cache/kernel/vmlinux"
qemu="$(command -v qemu-system-x86_64 || true)"
[ -f "$agent/dist/src/agent/boot.js" ] || { echo "image: agent snapshot skipped: no agent bundle staged"; exit 0; }
[ -f "$kernel" ] && [ -n "$qemu" ] || { echo "image: agent snapshot skipped: needs the guest kernel ($kernel) and qemu-system-x86_64"; exit 0; }

# The guest half: PID 1 of the snapshot-building boot (busybox sh).
cat > "$stage/sbin/kata-agent-snapshot" <<'EOF'
#!/bin/sh
# Guest half of guest/image/agent-snapshot.sh: runs as PID 1 once at image
# build time, never in a sandbox.
mount -t proc proc /proc; mount -t tmpfs tmpfs /tmp; mount -t devtmpfs devtmpfs /dev 2>/dev/null
# kata-init's environment for the agent: V8 hashes its flags into the check
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root NODE_OPTIONS="--max-old-space-size=96 --v8-pool-size=1 --expose-gc"
cd /tmp
if node --snapshot-blob /tmp/agent.blob --build-snapshot /opt/kata-ts/dist/src/agent/boot.js 2>/tmp/err &&
   KATA_TS_AGENT_SNAPSHOT_CHECK=1 node --snapshot-blob /tmp/agent.blob /opt/kata-ts/dist/src/agent/boot.js 2>>/tmp/err | grep -q 'snapshot=true'; then
  grep -m1 '^flags' /proc/cpuinfo > /tmp/agent.blob.cpu
  tar -cf /dev/vdb -C /tmp agent.blob agent.blob.cpu && sync && echo "kata-agent-snapshot: done"
else
  echo "kata-agent-snapshot: failed: $(grep -v -i warning /tmp/err | tail -c 400)"
fi
poweroff -f
EOF
chmod 755 "$stage/sbin/kata-agent-snapshot"

# The key: what the blob is made of (the bundle, the proto it parses, node,
# the guest half) and what decides the guest's CPU features (kernel, QEMU);
# not the rest of the tree, so other image changes do not rebuild it.
key="$( { sha256sum "$agent/dist/src/agent/boot.js" "$agent/proto/agent.proto" "$stage/usr/bin/node" "$stage/sbin/kata-agent-snapshot" "$kernel"; "$qemu" --version | head -1; } | sed "s|$stage||" | sha256sum | cut -c1-16)"
dir="$cache/agent-snapshot"; mkdir -p "$dir"
if [ ! -f "$dir/$key.blob" ] || [ ! -f "$dir/$key.cpu" ]; then
  echo "image: agent snapshot: building it in a guest (QEMU/TCG boot, once per agent build)"
  t0=$(date +%s%N)
  work="$(mktemp -d "$cache/build/agent-snapshot.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  mkfs.erofs -T0 --all-root "$work/root.erofs" "$stage" >/dev/null
  truncate -s 64M "$work/out.raw"
  timeout 600 "$qemu" -M pc,accel=tcg -cpu max -smp 1 -m 512M -nodefaults -nographic -no-user-config -no-reboot \
    -kernel "$kernel" \
    -append "console=ttyS0 root=/dev/vda rootfstype=erofs ro init=/sbin/kata-agent-snapshot random.trust_cpu=on panic=-1 reboot=k no_timer_check quiet" \
    -serial "file:$work/console.log" \
    -drive "if=none,id=root,file=$work/root.erofs,format=raw,readonly=on" -device virtio-blk-pci,drive=root \
    -drive "if=none,id=out,file=$work/out.raw,format=raw" -device virtio-blk-pci,drive=out \
    -device virtio-rng-pci </dev/null >/dev/null 2>"$work/qemu.err" || true
  if grep -q 'kata-agent-snapshot: done' "$work/console.log" && tar -xf "$work/out.raw" -C "$work" agent.blob agent.blob.cpu 2>/dev/null; then
    mv "$work/agent.blob.cpu" "$dir/$key.cpu.tmp" && mv "$work/agent.blob" "$dir/$key.blob.tmp"
    mv "$dir/$key.cpu.tmp" "$dir/$key.cpu" && mv "$dir/$key.blob.tmp" "$dir/$key.blob"
    echo "image: agent snapshot built in the guest in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  else
    echo "image: agent snapshot failed, the agent loads its bundle instead: $(grep -a 'kata-agent-snapshot' "$work/console.log" | tail -c 400) $(tail -c 200 "$work/qemu.err")"
    exit 0
  fi
fi
cp "$dir/$key.blob" "$agent/agent.blob"; cp "$dir/$key.cpu" "$agent/agent.blob.cpu"
echo "image: agent startup snapshot ($(( $(stat -c %s "$agent/agent.blob") / 1024 )) KiB, $key)"
# keep only the newest few
ls -t "$dir"/*.blob 2>/dev/null | tail -n +6 | while read -r b; do rm -f "$b" "${b%.blob}.cpu"; done
