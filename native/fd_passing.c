// fd passing for an upgrade: the old process hands the new one the sockets of every live
// session (client connections, pod connections) with SCM_RIGHTS over a SOCK_SEQPACKET
// socketpair the new process inherits. Node's own IPC passes one handle per message and
// waits for an acknowledgement of each; this passes up to FDS_PER_MESSAGE in one sendmsg.
//
// fdChannel() -> [fd, fd]       a close-on-exec SOCK_SEQPACKET socketpair
// sendFds(channel, fds)         one message carrying fds (at most FDS_PER_MESSAGE), blocking
// recvFds(channel) -> fds       the next message's fds (close-on-exec), blocking
//
// Both ends are blocking: the old process sends every message before it tells the new one
// (over Node's IPC) how many to take, so a receive never waits for a sender.

#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fd_passing.h"
#include "napi_args.h"

// SCM_MAX_FD is 253 on Linux.
#define FDS_PER_MESSAGE 250

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char message[160];
  snprintf(message, sizeof message, "%s failed: %s", what, strerror(err));
  napi_throw_error(env, NULL, message);
  return NULL;
}

static napi_value fd_channel(napi_env env, napi_callback_info info) {
  (void)info;
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) return throw_errno(env, "socketpair", errno);
  napi_value result, value;
  napi_create_array_with_length(env, 2, &result);
  for (uint32_t i = 0; i < 2; i++) {
    napi_create_int32(env, fds[i], &value);
    napi_set_element(env, result, i, value);
  }
  return result;
}

static napi_value send_fds(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t channel = -1;
  uint32_t count = 0;
  bool is_array = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      napi_get_value_int32(env, argv[0], &channel) != napi_ok || channel < 0 ||
      napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &count) != napi_ok || count == 0 || count > FDS_PER_MESSAGE) {
    napi_throw_type_error(env, NULL, "sendFds(channel, fds) takes a channel fd and 1 to 250 fds");
    return NULL;
  }
  int fds[FDS_PER_MESSAGE];
  for (uint32_t i = 0; i < count; i++) {
    napi_value element;
    napi_get_element(env, argv[1], i, &element);
    if (napi_get_value_int32(env, element, &fds[i]) != napi_ok || fds[i] < 0) {
      napi_throw_type_error(env, NULL, "sendFds: every fd must be a non-negative integer");
      return NULL;
    }
  }
  char control[CMSG_SPACE(sizeof(int) * FDS_PER_MESSAGE)];
  memset(control, 0, sizeof control);
  unsigned char tag = (unsigned char)count;  // a message must carry at least a byte
  struct iovec iov = {.iov_base = &tag, .iov_len = 1};
  struct msghdr msg = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = CMSG_SPACE(sizeof(int) * count)};
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int) * count);
  memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * count);
  ssize_t sent;
  do sent = sendmsg(channel, &msg, MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  if (sent < 0) return throw_errno(env, "sendmsg (passing fds)", errno);
  return NULL;
}

static napi_value recv_fds(napi_env env, napi_callback_info info) {
  int32_t channel = one_natural_argument(env, info, "recvFds(channel) takes one channel fd");
  if (channel < 0) return NULL;
  char control[CMSG_SPACE(sizeof(int) * FDS_PER_MESSAGE)];
  unsigned char tag = 0;
  struct iovec iov = {.iov_base = &tag, .iov_len = 1};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  ssize_t got;
  do got = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
  while (got < 0 && errno == EINTR);
  if (got < 0) return throw_errno(env, "recvmsg (taking passed fds)", errno);
  if (got == 0) {
    napi_throw_error(env, NULL, "recvmsg (taking passed fds): the sender closed the channel");
    return NULL;
  }
  napi_value result;
  napi_create_array(env, &result);
  uint32_t n = 0;
  for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int fds[FDS_PER_MESSAGE];
    memcpy(fds, CMSG_DATA(cmsg), sizeof(int) * count);
    for (size_t i = 0; i < count; i++) {
      napi_value value;
      napi_create_int32(env, fds[i], &value);
      napi_set_element(env, result, n++, value);
    }
  }
  if ((msg.msg_flags & MSG_CTRUNC) != 0 || n != tag) {
    // What did arrive must not leak: close it before failing.
    for (uint32_t i = 0; i < n; i++) {
      napi_value value;
      int32_t fd;
      napi_get_element(env, result, i, &value);
      napi_get_value_int32(env, value, &fd);
      close(fd);
    }
    char message[128];
    snprintf(message, sizeof message, "recvmsg (taking passed fds): %u of %u fds arrived", n, (unsigned)tag);
    napi_throw_error(env, NULL, message);
    return NULL;
  }
  return result;
}

void register_fd_passing(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "fdChannel", NAPI_AUTO_LENGTH, fd_channel, NULL, &fn);
  napi_set_named_property(env, exports, "fdChannel", fn);
  napi_create_function(env, "sendFds", NAPI_AUTO_LENGTH, send_fds, NULL, &fn);
  napi_set_named_property(env, exports, "sendFds", fn);
  napi_create_function(env, "recvFds", NAPI_AUTO_LENGTH, recv_fds, NULL, &fn);
  napi_set_named_property(env, exports, "recvFds", fn);
}
