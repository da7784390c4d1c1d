// The namespaces dials enter, opened once and kept while dials keep coming
// (netns_handles.c). Any thread may acquire and release; the N-API functions run on the
// main thread.

#ifndef NETNS_HANDLES_H
#define NETNS_HANDLES_H

#include <node_api.h>

typedef struct netns_handle netns_handle;

// Spare sockets kept per namespace (below): as many as a burst of kubectl connections (16
// in flight) takes at once.
#define NETNS_SPARES_MAX 16

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

// Spare sockets: TCP/IPv4 sockets a dial's worker thread made in the handle's namespace
// while it was there, for later dials to connect from the main thread without entering
// the namespace (a socket belongs to the namespace it was made in). They are the
// handle's: closed with it, and at once when it leaves the cache.

// Claim room for up to `most` spare sockets the caller is about to make in the handle's
// namespace: how many to make (0 if it has enough, or left the cache). The caller hands
// them over with netns_add_spares(handle, fds, made, claimed), even if it made none.
int netns_claim_spares(netns_handle *handle, int most);

// Give `count` spare sockets to the handle, ending a claim of `claimed`; those it has no
// room for (or all, if it left the cache) are closed.
void netns_add_spares(netns_handle *handle, const int *fds, int count, int claimed);

// A spare socket of the cached handle of `path` (now the caller's), or -1 if it has none.
// Counts as a use of the handle (closeIdleNetns). When its spares run low, *refill is the
// handle, held for the caller (netns_release when done), with a claim of *refill_count
// spares for the caller to make; else NULL.
int netns_take_spare(const char *path, netns_handle **refill, int *refill_count);

// forgetNetns(path?) and closeIdleNetns(idleMs), for JavaScript.
void register_netns_handles(napi_env env, napi_value exports);

#endif
