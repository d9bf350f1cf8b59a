/*
 * kata-pty: run a command on a fresh pseudo-terminal and hand the master to
 * whoever listens on a unix socket — the same console-socket protocol crun
 * uses (one SCM_RIGHTS message), so the agent receives it with the native
 * addon's recvFd just as it does for container terminals.
 *
 *   kata-pty SOCKET ROWS COLS CMD [ARGS...]
 *
 * Why a helper: the agent (Node) cannot allocate a pty (no grantpt/unlockpt/
 * TIOCSCTTY), and the debug console must run outside every container, so
 * crun is the wrong tool. The helper stays the parent of the command and
 * exits with its status (128 + signal when killed), like `crun run` in
 * foreground mode, so the agent's GuestProcess code is reused unchanged.
 * It keeps the master open until it has been sent: output written before
 * the agent received it is not lost. Catchable signals sent to the helper
 * are forwarded to the command (the agent only knows the helper's pid).
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
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static volatile pid_t child_pid;

/* The agent signals the helper (the pid it knows); pass it on to the command. */
static void forward(int sig) {
  if (child_pid > 0) kill(child_pid, sig);
}

static int send_fd(const char *path, int fd) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof(addr.sun_path)) { errno = ENAMETOOLONG; close(s); return -1; }
  strcpy(addr.sun_path, path);
  if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) != 0) { close(s); return -1; }
  char byte = 'P';
  struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
  union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } ctl;
  memset(&ctl, 0, sizeof(ctl));
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  ssize_t n;
  do { n = sendmsg(s, &msg, 0); } while (n < 0 && errno == EINTR);
  close(s);
  return n < 0 ? -1 : 0;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    dprintf(2, "usage: kata-pty SOCKET ROWS COLS CMD [ARGS...]\n");
    return 125;
  }
  int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
    dprintf(2, "kata-pty: cannot allocate a pty: %s\n", strerror(errno));
    return 125;
  }
  const char *slave = ptsname(master);
  struct winsize ws = { .ws_row = (unsigned short)atoi(argv[2]), .ws_col = (unsigned short)atoi(argv[3]) };
  if (ws.ws_row && ws.ws_col) ioctl(master, TIOCSWINSZ, &ws);
  pid_t child = fork();
  if (child < 0) { dprintf(2, "kata-pty: fork: %s\n", strerror(errno)); return 125; }
  if (child == 0) {
    setsid();
    int s = open(slave, O_RDWR);
    if (s < 0) { dprintf(2, "kata-pty: open %s: %s\n", slave, strerror(errno)); _exit(125); }
    ioctl(s, TIOCSCTTY, 0);
    dup2(s, 0); dup2(s, 1); dup2(s, 2);
    if (s > 2) close(s);
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    execvp(argv[4], argv + 4);
    dprintf(2, "kata-pty: %s: %s\n", argv[4], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
  }
  child_pid = child;
  int fwd[] = { SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT };
  for (size_t i = 0; i < sizeof(fwd) / sizeof(fwd[0]); i++) {
    struct sigaction sa = { .sa_handler = forward, .sa_flags = SA_RESTART };
    sigaction(fwd[i], &sa, NULL);
  }
  if (send_fd(argv[1], master) != 0) {
    dprintf(2, "kata-pty: cannot send the pty to %s: %s\n", argv[1], strerror(errno));
    kill(child, SIGKILL);
  }
  close(master);
  int status;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) return 125;
  }
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}
