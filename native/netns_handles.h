// The namespaces dials enter, opened once and kept while dials keep coming
// (netns_handles.c). Any thread may acquire and release; the N-API functions run on the
// main thread.

#ifndef NETNS_HANDLES_H
#define NETNS_HANDLES_H

#include <node_api.h>

typedef struct netns_handle netns_handle;

// The namespace at `path`, held for the caller until netns_release: the cached handle,
// or one opened now (and cached). NULL with errno set when the path cannot be opened.
netns_handle *netns_acquire(const char *path);

// The handle's fd: valid until the caller's netns_release.
int netns_fd(const netns_handle *handle);

// After a dial through `handle` failed: does its path still name the namespace it holds?
// If not (the path is gone, or names another namespace now), the handle leaves the cache,
// *err is the reason (stat's errno, or ESTALE), and 0 is returned.
int netns_still_current(netns_handle *handle, int *err);

// The handle leaves the cache (setns refused it); it is closed once released.
void netns_discard(netns_handle *handle);

void netns_release(netns_handle *handle);

// forgetNetns(path?) and closeIdleNetns(idleMs), for JavaScript.
void register_netns_handles(napi_env env, napi_value exports);

#endif
