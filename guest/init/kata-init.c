/*
 * kata-init: PID 1 of the kata-ts guest.
 *
 * Mounts the pseudo filesystems a container runtime needs, starts the agent
 * (Node; from its V8 startup snapshot when the image has one for this CPU)
 * and then does what Node cannot do as PID 1: reap every orphan
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

#define AGENT_JS "/opt/kata-ts/dist/src/agent/boot.js"
#define AGENT_SNAPSHOT "/opt/kata-ts/agent.blob"
#define AGENT_SNAPSHOT_CPU "/opt/kata-ts/agent.blob.cpu"
/* Node's exit status when it cannot use a --snapshot-blob (ExitCode::kStartupSnapshotFailure). */
#define NODE_SNAPSHOT_FAILURE 14

/* Up to the first n-1 bytes of a file, NUL-terminated; -1 if unreadable. */
static ssize_t read_file(const char *path, char *buf, size_t n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t got = 0, r;
  while (got < (ssize_t)n - 1 && (r = read(fd, buf + got, n - 1 - got)) > 0) got += r;
  close(fd);
  buf[got] = 0;
  return got;
}

/* Whether the kernel command line holds `word` as a whole parameter. */
static int cmdline_has(const char *word) {
  char buf[4096];
  if (read_file("/proc/cmdline", buf, sizeof buf) <= 0) return 0;
  size_t len = strlen(word);
  for (char *p = buf; (p = strstr(p, word)) != NULL; p += len)
    if ((p == buf || p[-1] == ' ') && (p[len] == ' ' || p[len] == '\n' || p[len] == 0)) return 1;
  return 0;
}

/*
 * Whether to start the agent from its V8 startup snapshot (src/agent/boot.ts,
 * made in a guest by guest/image/agent-snapshot.sh): only when the image has
 * one, this CPU's flags line is the one it was made on (V8 refuses a blob
 * from other CPU features, e.g. -cpu host under KVM: then one line says so
 * and the agent loads its bundle), and not under agent.log=debug (a
 * snapshot's require() cannot load winston, the debug logger).
 */
static int use_snapshot(void) {
  static char want[4096], cpuinfo[65536];
  if (access(AGENT_SNAPSHOT, R_OK) != 0) return 0;
  if (cmdline_has("agent.log=debug")) return 0;
  if (read_file(AGENT_SNAPSHOT_CPU, want, sizeof want) <= 0 || read_file("/proc/cpuinfo", cpuinfo, sizeof cpuinfo) <= 0) return 0;
  char *flags = strstr(cpuinfo, "\nflags");
  if (flags && strncmp(flags + 1, want, strlen(want)) == 0) return 1;
  say("agent snapshot made on another CPU model: starting the agent from its bundle");
  return 0;
}

static pid_t start_agent(int snapshot) {
  pid_t pid = fork();
  if (pid == 0) {
    setsid();
    char *plain[] = { "/usr/bin/node", AGENT_JS, NULL };
    char *snap[] = { "/usr/bin/node", "--snapshot-blob", AGENT_SNAPSHOT, AGENT_JS, NULL };
    execv("/usr/bin/node", snapshot ? snap : plain);
    dprintf(2, "kata-init: exec agent: %s\n", strerror(errno));
    _exit(127);
  }
  if (pid < 0) say("fork failed");
  return pid;
}

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  if (write(fd, text, strlen(text)) < 0) { /* a controller may be absent */ }
  close(fd);
}

#define REPORTING_ORDER_PARAM "page_reporting.page_reporting_order="
#define REPORTING_ORDER_SYSFS "/sys/module/page_reporting/parameters/page_reporting_order"

/*
 * Free page reporting (virtio-balloon) returns only free blocks of at least
 * page_reporting_order to the host; the default here is 4 MiB (order 10), so
 * the scattered pages a process frees stay in the guest. The host lowers it
 * with page_reporting.page_reporting_order=N on the command line
 * (src/hypervisor/memory-plan.ts), but Linux 6.1 overwrites the boot value
 * when the balloon driver registers (page_reporting_register sets it to the
 * driver's order or pageblock_order; measured: still 10 in the guest). The
 * parameter is writable afterwards, so it is set again here, once the
 * driver has registered (built in: before init runs).
 */
static void reapply_reporting_order(void) {
  char buf[4096];
  if (read_file("/proc/cmdline", buf, sizeof buf) <= 0) return;
  char *p = buf;
  while ((p = strstr(p, REPORTING_ORDER_PARAM)) != NULL && p != buf && p[-1] != ' ') p++;
  if (!p) return;
  p += strlen(REPORTING_ORDER_PARAM);
  char val[8];
  size_t n = 0;
  while (n < sizeof val - 2 && p[n] >= '0' && p[n] <= '9') { val[n] = p[n]; n++; }
  if (n == 0) return;
  val[n++] = '\n';
  val[n] = 0;
  write_file(REPORTING_ORDER_SYSFS, val);
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
  reapply_reporting_order();
  symlink("/proc/self/fd", "/dev/fd");
  symlink("pts/ptmx", "/dev/ptmx");
  sethostname("kata-ts", 7);

  setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
  setenv("HOME", "/root", 1);
  /* guest/image/agent-snapshot.sh makes the agent's snapshot under these same
     options (V8 checks its flags). --v8-pool-size=1: V8's worker threads
     (4 by default) buy nothing on the agent's one vCPU, and not starting three
     of them saved 30-40 ms of the guest's time to agent ready (4 boots each,
     QEMU -icount, 2026-12-01). Tried and not kept:
     --single-threaded, --jitless (no clear gain in 2 boots each);
     --max-semi-space-size=1 (agent anon 14.2 vs 14.0-14.1 MiB idle, one
     guest each: V8's young generation is not what the agent holds).
     --expose-gc: the agent's idle trim runs gc() before malloc_trim
     (src/agent/idle-trim.ts says why). */
  setenv("NODE_OPTIONS", "--max-old-space-size=96 --v8-pool-size=1 --expose-gc", 0);
  /* One malloc arena: the agent's threads (libuv's pool, V8's worker) each got
     an arena of their own; with one, the agent's idle trim (src/agent/
     idle-trim.ts) returns 1.2-1.5 MiB more (measured, README "Memory
     density"). Not a V8 flag: the snapshot's flag check does not see it. */
  setenv("MALLOC_ARENA_MAX", "1", 0);

  int snapshot = use_snapshot();
  pid_t agent = start_agent(snapshot);

  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0 && errno == ECHILD) break;
    if (pid == agent && snapshot && WIFEXITED(status) && WEXITSTATUS(status) == NODE_SNAPSHOT_FAILURE) {
      /* Node refused the blob after all (it printed why): once, without it. */
      say("node refused the agent snapshot: starting the agent from its bundle");
      snapshot = 0;
      agent = start_agent(0);
      continue;
    }
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
