/*
 * pause: the process that holds a Kubernetes pod's namespaces open.
 *
 * Written for hookline's node test tier (tools/image.sh builds it into the
 * localhost/pause:3.10 image that containerd's sandbox_image names). It does
 * nothing but wait: SIGINT or SIGTERM ends it with status 0, and as the pod's
 * PID 1 (when the pod shares its PID namespace) it reaps every child that
 * exits, so none is left a zombie.
 *
 *   gcc -static -O2 -o pause pause.c
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t child_exited;

static void on_stop(int sig) {
  (void)sig;
  stop_requested = 1;
}

static void on_child(int sig) {
  (void)sig;
  child_exited = 1;
}

static void reap(void) {
  int saved = errno;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved;
}

static int handle(int sig, void (*fn)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = fn;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = (sig == SIGCHLD) ? SA_NOCLDSTOP : 0;
  return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
  if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
    puts("pause (hookline) 3.10");
    return 0;
  }
  if (getpid() != 1) {
    fputs("pause: not PID 1 of its namespace; waiting anyway\n", stderr);
  }
  /* Block the signals we handle, then wait for them atomically with sigsuspend:
     no signal can arrive between the check of a flag and the wait. */
  sigset_t handled, waiting;
  sigemptyset(&handled);
  sigaddset(&handled, SIGINT);
  sigaddset(&handled, SIGTERM);
  sigaddset(&handled, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &handled, &waiting) != 0 || handle(SIGINT, on_stop) != 0 ||
      handle(SIGTERM, on_stop) != 0 || handle(SIGCHLD, on_child) != 0) {
    perror("pause: signals");
    return 1;
  }
  sigdelset(&waiting, SIGINT);
  sigdelset(&waiting, SIGTERM);
  sigdelset(&waiting, SIGCHLD);
  for (;;) {
    sigsuspend(&waiting);
    if (child_exited) {
      child_exited = 0;
      reap();
    }
    if (stop_requested) {
      reap();
      return 0;
    }
  }
}
