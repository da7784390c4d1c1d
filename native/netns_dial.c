// netns_dial: dial localhost:<port> inside a network namespace, on a libuv worker thread.
//
// dialInNetns(netnsPath | null, port, timeoutMs[, connectingFd, errno4])
//   -> Promise<fd | { fd: -1, errno4, ... }>
// dialSpare(netnsPath, port) -> fd | -1 | { connectingFd } | { errno4 }: see below.
// takeSocketError(fd) -> errno (SO_ERROR), trimMemory() -> released?, see below.
// The namespace is entered through a handle kept for the dials that follow
// (netns_handles.c: forgetNetns, closeIdleNetns).
//
// The worker thread enters the namespace with setns(CLONE_NEWNET), creates the socket
// (a socket belongs to the namespace of the thread that creates it, for its whole life),
// connects to 127.0.0.1 and, only if that fails, to [::1] (serially: a parallel dial would
// need a second thread in the namespace), then returns to the process's own namespace. If
// it cannot return, the process aborts: a worker thread left in a pod's namespace would
// run later, unrelated work (DNS lookups, file I/O, other dials) in the wrong network.
// The main thread never calls setns.
//
// While it is in the namespace, a dial that reached 127.0.0.1 also makes spare sockets
// there and leaves them with the namespace's handle; dialSpare connects them later from
// the main thread. So a churn of connections into one pod takes a worker thread and two
// setns about once per SPARES_PER_DIAL + 1 connections, not for each.
//
// Every outcome resolves: to the connected fd on success, else to an object with the errno
// of whatever failed ({ nsStage, nsErrno } for the namespace, { errno4, errno6 } for the
// two connects), so that JavaScript builds the error texts (upstream's format) in one place.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <node_api.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fd_passing.h"
#include "napi_args.h"
#include "netns_handles.h"

#define MAX_PATH_BYTES 4096

// The namespace worker threads return to: the process's own, opened once at load time
// (the main thread never changes namespace, and every worker starts in it). Saves an
// open and a close per dial.
static int home_netns_fd = -1;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  char netns_path[MAX_PATH_BYTES];
  int has_netns;
  int port;
  int timeout_ms;
  // A spare socket whose connect to 127.0.0.1 dialSpare left under way, or -1.
  int connecting_fd;
  // results (errno4 may come set: dialSpare's connect from a spare socket failed)
  int fd;
  const char *ns_stage;  // NULL, "open", "setns", "stat" (the namespace held is not the path's now)
  int ns_errno;
  int errno4;
  int errno6;
} dial_job;

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// A TCP socket of `family` in the calling thread's namespace, non-blocking; -1 with errno.
static int tcp_socket(int family) {
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  // No Nagle: a small write (a keystroke, a query) goes to the app at once, never held
  // back waiting for the ACK of the previous one. The client side sets it too.
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// Start connecting `fd` to localhost:port: 0 if connected, EINPROGRESS if under way, else
// the errno. On loopback the handshake (or the refusing RST) has usually been processed
// by the time connect() returns, even non-blocking: see connect_outcome_now.
static int start_connect(int fd, int family, int port) {
  struct sockaddr_storage addr;
  socklen_t len;
  memset(&addr, 0, sizeof addr);
  if (family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&addr;
    a->sin_family = AF_INET;
    a->sin_port = htons((unsigned short)port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addr;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((unsigned short)port);
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  }
  return connect(fd, (struct sockaddr *)&addr, len) == 0 ? 0 : errno;
}

// Where a connect under way stands, without waiting: 0 if connected, EINPROGRESS if still
// under way, else its errno.
static int connect_outcome_now(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  int n = poll(&p, 1, 0);
  if (n < 0) return errno == EINTR ? EINPROGRESS : errno;
  if (n == 0) return EINPROGRESS;
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) soerr = errno;
  return soerr;
}

// Wait for a connect under way to end, until the deadline: 0 if connected, else its errno
// (ETIMEDOUT at the deadline). Past the deadline it still looks once: [::1] tried after
// 127.0.0.1 timed out is refused at once, and says so, rather than "timed out" unasked.
static int wait_connected(int fd, long long deadline) {
  for (;;) {
    long long left = deadline - now_ms();
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int n = poll(&p, 1, left > 0 ? (int)left : 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) {
      if (deadline - now_ms() <= 0) return ETIMEDOUT;
      continue;
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) soerr = errno;
    return soerr;
  }
}

// Connect to localhost:port from a new socket, bounded by the deadline; the fd, or -1 with *err set.
static int connect_loopback(int family, int port, long long deadline, int *err) {
  int fd = tcp_socket(family);
  if (fd < 0) {
    *err = errno;
    return -1;
  }
  int e = start_connect(fd, family, port);
  if (e == EINPROGRESS) e = wait_connected(fd, deadline);
  if (e == 0) return fd;
  *err = e;
  close(fd);
  return -1;
}

// 127.0.0.1, unless a spare socket's connect already failed (job->errno4), then [::1].
static void dial_both(dial_job *job, long long deadline) {
  if (job->errno4 == 0) {
    job->fd = connect_loopback(AF_INET, job->port, deadline, &job->errno4);
    if (job->fd >= 0) return;
  }
  job->fd = connect_loopback(AF_INET6, job->port, deadline, &job->errno6);
}

// Spare sockets a dial on a worker thread makes at most, while it is in the namespace.
#define SPARES_PER_DIAL 8

// Up to `count` sockets for netns_add_spares, made in the calling thread's namespace: how
// many were made.
static int make_spares(int *fds, int count) {
  int made = 0;
  while (made < count) {
    int fd = tcp_socket(AF_INET);
    if (fd < 0) break;  // out of fds: later dials make their own
    fds[made++] = fd;
  }
  return made;
}

// A dial's worker thread must not take the CPU from the thread that queued the dial: on a
// busy 2-core node the woken worker preempted the main thread in most dials (a profile of
// a connection churn: 10% of the main thread's time inside dialInNetns, waiting). A
// SCHED_BATCH thread gets no wakeup preemption; it still runs as soon as a CPU is free,
// at the same nice level. Set once per pool thread, on its first dial.
static __thread int batch_policy_set = 0;

static void prefer_not_to_preempt(void) {
  if (batch_policy_set) return;
  batch_policy_set = 1;
  struct sched_param param = {.sched_priority = 0};
  sched_setscheduler(0, SCHED_BATCH, &param);  // best effort: the dial works either way
}

// Back to the process's own namespace after work in a pod's (`what`), or abort: a worker
// thread left in a pod's namespace would run later, unrelated work there.
static void return_home_or_abort(const char *what, const char *where) {
  if (setns(home_netns_fd, CLONE_NEWNET) == 0) return;
  fprintf(stderr,
          "cri-portforward: cannot return a worker thread to its network namespace after %s %s: %s; "
          "aborting rather than run later work in the wrong namespace\n",
          what, where, strerror(errno));
  abort();
}

static void execute(napi_env env, void *data) {
  (void)env;
  dial_job *job = data;
  long long deadline = now_ms() + job->timeout_ms;
  prefer_not_to_preempt();
  job->fd = -1;
  if (job->connecting_fd >= 0) {
    // A spare socket's connect that dialSpare left under way: it needs no namespace to
    // finish. Only if it fails does this dial go on to [::1].
    int fd = job->connecting_fd;
    job->connecting_fd = -1;  // this dial's now: complete() must not close it again
    int e = wait_connected(fd, deadline);
    if (e == 0) {
      job->fd = fd;
      return;
    }
    close(fd);
    job->errno4 = e;
  }
  if (!job->has_netns) {
    dial_both(job, deadline);
    return;
  }
  if (home_netns_fd < 0) {
    job->ns_stage = "save";
    job->ns_errno = EBADF;
    return;
  }
  netns_handle *netns = netns_acquire(job->netns_path);
  if (netns == NULL) {
    job->ns_stage = "open";
    job->ns_errno = errno;
    return;
  }
  if (setns(netns_fd(netns), CLONE_NEWNET) != 0) {
    job->ns_stage = "setns";
    job->ns_errno = errno;
    netns_discard(netns);
    netns_release(netns);
    return;
  }
  dial_both(job, deadline);
  int spares[SPARES_PER_DIAL];
  // Spares only where 127.0.0.1 answered: an IPv6-only app's dials all come here.
  int claimed = job->fd >= 0 && job->errno4 == 0 ? netns_claim_spares(netns, SPARES_PER_DIAL) : 0;
  int made = make_spares(spares, claimed);
  return_home_or_abort("a dial in", job->netns_path);
  if (claimed > 0) netns_add_spares(netns, spares, made, claimed);
  // Nothing answered: maybe because the namespace held is not the sandbox's any more.
  // Then it is reported as closed, and the Forwarder asks again and dials again.
  int err = 0;
  if (job->fd < 0 && !netns_still_current(netns, &err)) {
    job->ns_stage = "stat";
    job->ns_errno = err;
  }
  netns_release(netns);
}

static void set_int(napi_env env, napi_value obj, const char *name, int value) {
  napi_value v;
  napi_create_int32(env, value, &v);
  napi_set_named_property(env, obj, name, v);
}

static void complete(napi_env env, napi_status status, void *data) {
  dial_job *job = data;
  napi_value result;
  if (status == napi_ok && job->fd >= 0) {
    // The common case resolves to the fd itself: an object built property by property
    // (napi_set_named_property) took V8's slow path on every connection.
    napi_create_int32(env, job->fd, &result);
    napi_resolve_deferred(env, job->deferred, result);
    napi_delete_async_work(env, job->work);
    free(job);
    return;
  }
  napi_create_object(env, &result);
  if (status != napi_ok) {
    if (job->fd >= 0) close(job->fd);
    if (job->connecting_fd >= 0) close(job->connecting_fd);
    job->fd = -1;
    job->ns_stage = "cancelled";
    job->ns_errno = ECANCELED;
  }
  set_int(env, result, "fd", job->fd);
  set_int(env, result, "errno4", job->errno4);
  set_int(env, result, "errno6", job->errno6);
  set_int(env, result, "nsErrno", job->ns_errno);
  if (job->ns_stage != NULL) {
    napi_value stage;
    napi_create_string_utf8(env, job->ns_stage, NAPI_AUTO_LENGTH, &stage);
    napi_set_named_property(env, result, "nsStage", stage);
  }
  napi_resolve_deferred(env, job->deferred, result);
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value throw_type_error(napi_env env, const char *message) {
  napi_throw_type_error(env, NULL, message);
  return NULL;
}

static napi_value dial_in_netns(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || (argc != 3 && argc != 5)) {
    return throw_type_error(env, "dialInNetns(netnsPath | null, port, timeoutMs[, connectingFd, errno4]) takes 3 or 5 arguments");
  }
  dial_job *job = calloc(1, sizeof *job);
  if (job == NULL) return throw_type_error(env, "out of memory");
  job->connecting_fd = -1;
  napi_valuetype type;
  napi_typeof(env, argv[0], &type);
  if (type == napi_string) {
    size_t len = 0;
    napi_get_value_string_utf8(env, argv[0], job->netns_path, sizeof job->netns_path, &len);
    if (len == 0 || len >= sizeof job->netns_path - 1) {
      free(job);
      return throw_type_error(env, "netnsPath must be a non-empty path shorter than 4095 bytes");
    }
    job->has_netns = 1;
  } else if (type != napi_null) {
    free(job);
    return throw_type_error(env, "netnsPath must be a string or null");
  }
  if (napi_get_value_int32(env, argv[1], &job->port) != napi_ok || job->port < 1 || job->port > 65535) {
    free(job);
    return throw_type_error(env, "port must be an integer in 1..65535");
  }
  if (napi_get_value_int32(env, argv[2], &job->timeout_ms) != napi_ok || job->timeout_ms < 1) {
    free(job);
    return throw_type_error(env, "timeoutMs must be a positive integer");
  }
  // Read last: a connecting fd is the dial's from here, closed whatever happens.
  if (argc == 5 && (napi_get_value_int32(env, argv[3], &job->connecting_fd) != napi_ok ||
                    napi_get_value_int32(env, argv[4], &job->errno4) != napi_ok || job->errno4 < 0 ||
                    (job->connecting_fd >= 0 && job->errno4 != 0))) {
    if (job->connecting_fd >= 0) close(job->connecting_fd);
    free(job);
    return throw_type_error(env, "connectingFd (or -1) and errno4 (or 0) must be integers, not both set");
  }
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "dialInNetns", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

// A refill of a handle's spare sockets, on a worker thread, which dialSpare queues when
// they run low: the dials of a steady churn then all find one. Nothing waits for it.
typedef struct {
  napi_async_work work;
  netns_handle *netns;  // held (netns_take_spare) until complete
  int claimed;
  int made;
  int fds[NETNS_SPARES_MAX];
} refill_job;

static void refill_execute(napi_env env, void *data) {
  (void)env;
  refill_job *job = data;
  prefer_not_to_preempt();
  // A namespace that cannot be entered gets no spares; its next dial finds out why.
  if (setns(netns_fd(job->netns), CLONE_NEWNET) != 0) return;
  job->made = make_spares(job->fds, job->claimed);
  return_home_or_abort("making spare sockets in", "a pod's namespace");
}

static void refill_complete(napi_env env, napi_status status, void *data) {
  (void)status;  // not run (cancelled at exit): nothing made, the claim still ends
  refill_job *job = data;
  netns_add_spares(job->netns, job->fds, job->made, job->claimed);
  netns_release(job->netns);
  napi_delete_async_work(env, job->work);
  free(job);
}

static void queue_refill(napi_env env, netns_handle *netns, int claimed) {
  refill_job *job = calloc(1, sizeof *job);
  napi_value name;
  if (job == NULL ||
      napi_create_string_utf8(env, "netnsSpareRefill", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, refill_execute, refill_complete, job, &job->work) != napi_ok) {
    free(job);
    netns_add_spares(netns, NULL, 0, claimed);  // no refill this time: the next dial may ask again
    netns_release(netns);
    return;
  }
  job->netns = netns;
  job->claimed = claimed;
  if (napi_queue_async_work(env, job->work) != napi_ok) {
    napi_delete_async_work(env, job->work);
    free(job);
    netns_add_spares(netns, NULL, 0, claimed);
    netns_release(netns);
  }
}

// dialSpare(netnsPath, port) -> fd | -1 | { connectingFd } | { errno4 }, on the main thread.
// Connects a spare socket of the namespace's handle (netns_handles.h) to 127.0.0.1:port:
// the fd once connected, which on loopback is the usual case by the time connect()
// returns; -1 when the handle has no spare (then dialInNetns, as without spares). A
// connect still under way goes on with dialInNetns(..., connectingFd, 0) on a worker
// thread; one that failed with dialInNetns(..., -1, errno4), which tries [::1] only.
// No namespace is entered here: the socket was made in it.

static napi_value dial_spare(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char path[MAX_PATH_BYTES];
  size_t len = 0;
  int32_t port = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok || len == 0 ||
      len >= sizeof path - 1 || napi_get_value_int32(env, argv[1], &port) != napi_ok || port < 1 || port > 65535) {
    return throw_type_error(env, "dialSpare(netnsPath, port) takes a non-empty path and a port in 1..65535");
  }
  napi_value result;
  netns_handle *refill;
  int refill_count;
  int fd = netns_take_spare(path, &refill, &refill_count);
  if (refill != NULL) queue_refill(env, refill, refill_count);
  if (fd < 0) {
    napi_create_int32(env, -1, &result);
    return result;
  }
  int e = start_connect(fd, AF_INET, port);
  if (e == EINPROGRESS) e = connect_outcome_now(fd);
  if (e == 0) {
    napi_create_int32(env, fd, &result);
    return result;
  }
  napi_create_object(env, &result);
  if (e == EINPROGRESS) {
    set_int(env, result, "connectingFd", fd);
  } else {
    close(fd);
    set_int(env, result, "errno4", e);
  }
  return result;
}

// takeSocketError(fd) -> errno: the socket's pending error (getsockopt SO_ERROR, which
// also clears it), 0 if none. libuv reports an RST that arrives behind data still in flight
// as a plain EOF (a short read, then POLLHUP, and it never reads again), so the pipe asks
// here whether an EOF from the pod was really a reset.

static napi_value take_socket_error(napi_env env, napi_callback_info info) {
  int32_t fd = one_natural_argument(env, info, "takeSocketError(fd) takes one file descriptor");
  if (fd < 0) return NULL;
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  napi_value result;
  napi_create_int32(env, err, &result);
  return result;
}

// trimMemory() -> whether malloc_trim released anything. Freed
// buffers of finished connections stay in glibc's arenas (1 MiB buffers come from the heap
// once glibc's dynamic mmap threshold has risen); malloc_trim(0) hands their free pages
// back to the kernel.
static napi_value trim_memory(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  napi_get_boolean(env, malloc_trim(0) != 0, &result);
  return result;
}

// dupFd(fd) -> a new close-on-exec fd for the same open file (F_DUPFD_CLOEXEC), or throws.
// An upgrade keeps one of the streaming listener while the new process takes it over, so
// that it can listen again should the new process fail.
static napi_value dup_fd(napi_env env, napi_callback_info info) {
  int32_t fd = one_natural_argument(env, info, "dupFd(fd) takes one file descriptor");
  if (fd < 0) return NULL;
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) {
    char message[96];
    snprintf(message, sizeof message, "dup of fd %d failed: %s", fd, strerror(errno));
    napi_throw_error(env, NULL, message);
    return NULL;
  }
  napi_value result;
  napi_create_int32(env, copy, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  if (home_netns_fd < 0) home_netns_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home_netns_fd < 0) {
    napi_throw_error(env, NULL, "cannot open /proc/self/ns/net: the netns dialer needs procfs");
    return NULL;
  }
  napi_value fn;
  napi_create_function(env, "dialInNetns", NAPI_AUTO_LENGTH, dial_in_netns, NULL, &fn);
  napi_set_named_property(env, exports, "dialInNetns", fn);
  napi_create_function(env, "dialSpare", NAPI_AUTO_LENGTH, dial_spare, NULL, &fn);
  napi_set_named_property(env, exports, "dialSpare", fn);
  napi_create_function(env, "takeSocketError", NAPI_AUTO_LENGTH, take_socket_error, NULL, &fn);
  napi_set_named_property(env, exports, "takeSocketError", fn);
  napi_create_function(env, "trimMemory", NAPI_AUTO_LENGTH, trim_memory, NULL, &fn);
  napi_set_named_property(env, exports, "trimMemory", fn);
  napi_create_function(env, "dupFd", NAPI_AUTO_LENGTH, dup_fd, NULL, &fn);
  napi_set_named_property(env, exports, "dupFd", fn);
  register_fd_passing(env, exports);
  register_netns_handles(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
