#ifndef FD_PASSING_H
#define FD_PASSING_H
#include <node_api.h>
// Adds fdChannel, sendFds and recvFds to the addon's exports (fd_passing.c).
void register_fd_passing(napi_env env, napi_value exports);
#endif
