/* Peer for bench/vmm.ts: the PIO exit round trip with raw KVM ioctls in C —
 * a long-mode guest loop of `out dx, al` (one KVM_EXIT_IO each) answered by
 * an immediate KVM_RUN, no JS. Prints JSON {exits, nsPerExit}.
 * Usage: vmm-exit N */
#include <linux/kvm.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#define CHK(x) do { if ((x) < 0) { perror(#x); exit(1); } } while (0)
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int argc, char **argv) {
  uint32_t n = argc > 1 ? (uint32_t)atoi(argv[1]) : 10000;
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC); CHK(kvm);
  int vm = ioctl(kvm, KVM_CREATE_VM, 0); CHK(vm);
  CHK(ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000));
  CHK(ioctl(vm, KVM_CREATE_IRQCHIP, 0));
  size_t sz = 4 << 20;
  uint8_t *mem = mmap(0, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  struct kvm_userspace_memory_region r = { .slot = 0, .guest_phys_addr = 0, .memory_size = sz, .userspace_addr = (uint64_t)mem };
  CHK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r));
  int cpu = ioctl(vm, KVM_CREATE_VCPU, 0); CHK(cpu);
  int rs = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run *run = mmap(0, rs, PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
  uint64_t *pml4 = (void *)(mem + 0x9000), *pdpt = (void *)(mem + 0xa000), *pd = (void *)(mem + 0xb000);
  pml4[0] = 0xa000 | 3; pdpt[0] = 0xb000 | 3; for (int i = 0; i < 512; i++) pd[i] = (i * 0x200000ull) | 0x83;
  uint64_t *gdt = (void *)(mem + 0x500); gdt[2] = 0x00af9b000000ffffull; gdt[3] = 0x00cf93000000ffffull;
  uint8_t code[] = { 0x66, 0xba, 0xff, 0x03, 0xb9, 0, 0, 0, 0, 0xee, 0xff, 0xc9, 0x75, 0xfb, 0xb0, 0xfe, 0xe6, 0x64, 0xf4 };
  memcpy(code + 5, &n, 4);
  memcpy(mem + 0x100000, code, sizeof code);
  struct kvm_sregs s; CHK(ioctl(cpu, KVM_GET_SREGS, &s));
  struct kvm_segment cs = { .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 11, .present = 1, .s = 1, .l = 1, .g = 1 };
  struct kvm_segment ds = cs; ds.selector = 0x18; ds.type = 3; ds.l = 0; ds.db = 1;
  s.cs = cs; s.ds = s.es = s.fs = s.gs = s.ss = ds; s.gdt.base = 0x500; s.gdt.limit = 31;
  s.cr3 = 0x9000; s.cr4 = 0x20; s.cr0 = 0x80000011; s.efer = 0x500;
  CHK(ioctl(cpu, KVM_SET_SREGS, &s));
  struct kvm_regs g = { 0 }; g.rip = 0x100000; g.rflags = 2; CHK(ioctl(cpu, KVM_SET_REGS, &g));
  uint32_t exits = 0; double t0 = 0;
  for (;;) {
    CHK(ioctl(cpu, KVM_RUN, 0));
    if (run->exit_reason != KVM_EXIT_IO) { fprintf(stderr, "exit %u\n", run->exit_reason); return 1; }
    if (run->io.port == 0x64) break;
    if (exits++ == 0) t0 = now();
  }
  double ns = (now() - t0) / (exits > 1 ? exits - 1 : 1);
  printf("{\"exits\":%u,\"nsPerExit\":%.0f}\n", exits, ns);
  return 0;
}
