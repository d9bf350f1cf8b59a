/*
 * kata-init: PID 1 of the kata-ts guest.
 *
 * Mounts the pseudo filesystems a container runtime needs, starts the agent
 * (Node) and then does what Node cannot do as PID 1: reap every orphan
 * (waitpid(-1)) so exited container processes never pile up as zombies. When
 * the agent exits, the VM powers off (with QEMU's -no-reboot a reboot ends
 * the VM too) — the guest's only job is the agent.
 *
 * Built statically by guest/image/build.sh with the host's gcc; our own code.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *msg) {
  dprintf(2, "kata-init: %s\n", msg);
}

static void mnt(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
  mkdir(dst, 0755);
  if (mount(src, dst, type, flags, data) != 0 && errno != EBUSY)
    dprintf(2, "kata-init: mount %s on %s: %s\n", type, dst, strerror(errno));
}

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  if (write(fd, text, strlen(text)) < 0) { /* a controller may be absent */ }
  close(fd);
}

int main(void) {
  if (getpid() != 1) { say("must run as PID 1"); return 1; }
  /* The root is a read-only EROFS image; everything writable is tmpfs. */
  mnt("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mnt("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mnt("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  mnt("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
  mnt("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mnt("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  mnt("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, "nsdelegate");
  write_file("/sys/fs/cgroup/cgroup.subtree_control", "+cpuset +cpu +io +memory +pids");
  symlink("/proc/self/fd", "/dev/fd");
  symlink("pts/ptmx", "/dev/ptmx");
  sethostname("kata-ts", 7);

  setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
  setenv("HOME", "/root", 1);
  setenv("NODE_OPTIONS", "--max-old-space-size=96", 0);

  pid_t agent = fork();
  if (agent == 0) {
    setsid();
    char *argv[] = { "/usr/bin/node", "/opt/kata-ts/dist/src/agent/boot.js", NULL };
    execv(argv[0], argv);
    dprintf(2, "kata-init: exec agent: %s\n", strerror(errno));
    _exit(127);
  }
  if (agent < 0) { say("fork failed"); }

  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0 && errno == ECHILD) break;
    if (pid == agent) {
      if (WIFEXITED(status)) dprintf(2, "kata-init: agent exited with status %d\n", WEXITSTATUS(status));
      else dprintf(2, "kata-init: agent killed by signal %d\n", WTERMSIG(status));
      break;
    }
  }
  sync();
  reboot(RB_POWER_OFF);
  reboot(RB_AUTOBOOT);
  return 0;
}
