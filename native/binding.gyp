{
  "targets": [
    {
      "target_name": "kata_native",
      "sources": ["src/addon.cc", "src/fd.cc", "src/fs.cc", "src/mem.cc", "src/sock.cc", "src/kvm.cc", "src/kvm_vcpu.cc", "src/kvm_snapshot.cc", "src/vfio.cc", "src/tap.cc", "src/netns.cc", "src/guest_time_rng.cc", "src/ext4_resize.cc", "src/pipe_io.cc", "src/mount.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "cflags_cc!": ["-fno-exceptions"]
    }
  ]
}
