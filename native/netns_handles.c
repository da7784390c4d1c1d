// netns_handles: the namespaces that dials enter, each opened once and kept while dials
// into it keep coming. A churn of connections into one pod otherwise costs an open() of
// its namespace path and a close() per connection (perf of a kubectl churn: the open 1.7%
// of the server's CPU, and the close tears down the nsfs dentry and inode each time).
//
// Who closes a handle:
// - closeIdleNetns(idleMs): JavaScript sweeps handles no dial has used for idleMs, so an
//   idle server holds no namespace (src/netns/handles.ts);
// - forgetNetns(path?): the sandbox is being stopped or removed (a held namespace would
//   outlive its sandbox's own teardown);
// - a dial that failed finds that the path no longer names the namespace it holds (gone,
//   or replaced behind our back): the handle is dropped and the dial reported as a closed
//   namespace, which makes the Forwarder ask where the sandbox is now and dial again;
// - the cache is full (NETNS_HANDLES_MAX): the least recently used idle handle goes.
// A handle in use by a dial (users > 0) is never closed: one that leaves the cache is
// closed by its last release, so its fd number cannot be reused for another namespace
// while a worker thread may still setns with it.
//
// A handle also keeps up to NETNS_SPARES_MAX spare sockets made in its namespace
// (netns_add_spares, by a dial's worker thread while it is there), which later dials
// connect from the main thread (dialSpare in netns_dial.c): no worker thread, no setns.
// They go with the handle: closed when it leaves the cache (a removed sandbox's namespace
// must not live on in them) or is closed.
//
// The fd names the namespace the path named when it was opened. That is the namespace a
// dial of the sandbox resolved to that path enters, as an open() per dial would, until
// one of the above notices otherwise.

#define _GNU_SOURCE
#include "netns_handles.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "napi_args.h"

// Namespaces kept at once: a node's pods with forwards running, with room to spare.
#define NETNS_HANDLES_MAX 64
// Fewer left (counting those being made) and netns_take_spare asks for a refill, so that
// a steady churn finds one ready and never waits for a worker thread.
#define NETNS_SPARES_LOW 8

struct netns_handle {
  netns_handle *next;
  char *path;
  int fd;
  dev_t dev;
  ino_t ino;
  // Dials holding it now.
  int users;
  // In the cache (else closed by the last release).
  int cached;
  long long last_used_ms;
  int spares[NETNS_SPARES_MAX];
  int spare_count;
  // Spares claimed by workers making them now (netns_claim_spares).
  int spares_claimed;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static netns_handle *cache;
static int cached_count;

static long long monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void close_spares(netns_handle *handle) {
  for (int i = 0; i < handle->spare_count; i++) close(handle->spares[i]);
  handle->spare_count = 0;
}

static void free_handle(netns_handle *handle) {
  close_spares(handle);
  close(handle->fd);
  free(handle->path);
  free(handle);
}

// Out of the cache; closed now if no dial holds it. Called with the lock held.
static void drop_locked(netns_handle *handle) {
  if (!handle->cached) return;
  for (netns_handle **link = &cache; *link != NULL; link = &(*link)->next) {
    if (*link == handle) {
      *link = handle->next;
      break;
    }
  }
  handle->cached = 0;
  handle->next = NULL;
  cached_count--;
  close_spares(handle);
  if (handle->users == 0) free_handle(handle);
}

// Called with the lock held.
static netns_handle *find_locked(const char *path) {
  for (netns_handle *h = cache; h != NULL; h = h->next) {
    if (strcmp(h->path, path) == 0) return h;
  }
  return NULL;
}

// Room for one more: the least recently used handle no dial holds goes. Lock held.
static void make_room_locked(void) {
  netns_handle *oldest = NULL;
  for (netns_handle *h = cache; h != NULL; h = h->next) {
    if (h->users == 0 && (oldest == NULL || h->last_used_ms < oldest->last_used_ms)) oldest = h;
  }
  if (oldest != NULL) drop_locked(oldest);
}

netns_handle *netns_acquire(const char *path) {
  pthread_mutex_lock(&lock);
  netns_handle *found = find_locked(path);
  if (found != NULL) {
    found->users++;
    found->last_used_ms = monotonic_ms();
    pthread_mutex_unlock(&lock);
    return found;
  }
  pthread_mutex_unlock(&lock);

  // Opened without the lock: other dials go on meanwhile.
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  struct stat st;
  netns_handle *handle = calloc(1, sizeof *handle);
  char *copy = strdup(path);
  if (handle == NULL || copy == NULL || fstat(fd, &st) != 0) {
    int err = handle == NULL || copy == NULL ? ENOMEM : errno;
    free(handle);
    free(copy);
    close(fd);
    errno = err;
    return NULL;
  }
  handle->path = copy;
  handle->fd = fd;
  handle->dev = st.st_dev;
  handle->ino = st.st_ino;
  handle->users = 1;
  handle->last_used_ms = monotonic_ms();

  pthread_mutex_lock(&lock);
  found = find_locked(path);
  if (found != NULL) {
    // Another dial opened it meanwhile: one handle per path.
    found->users++;
    found->last_used_ms = handle->last_used_ms;
    pthread_mutex_unlock(&lock);
    free_handle(handle);
    return found;
  }
  if (cached_count >= NETNS_HANDLES_MAX) make_room_locked();
  if (cached_count < NETNS_HANDLES_MAX) {
    handle->next = cache;
    cache = handle;
    handle->cached = 1;
    cached_count++;
  }  // else every cached handle is in use: this one serves this dial only
  pthread_mutex_unlock(&lock);
  return handle;
}

int netns_fd(const netns_handle *handle) { return handle->fd; }

int netns_still_current(netns_handle *handle, int *err) {
  struct stat st;
  int now_err = 0;
  if (stat(handle->path, &st) != 0) {
    now_err = errno;
  } else if (st.st_dev != handle->dev || st.st_ino != handle->ino) {
    now_err = ESTALE;
  }
  if (now_err == 0) return 1;
  *err = now_err;
  netns_discard(handle);
  return 0;
}

void netns_discard(netns_handle *handle) {
  pthread_mutex_lock(&lock);
  // The caller still holds it (users > 0): drop_locked leaves the close to its release.
  drop_locked(handle);
  pthread_mutex_unlock(&lock);
}

void netns_release(netns_handle *handle) {
  pthread_mutex_lock(&lock);
  int last = --handle->users == 0 && !handle->cached;
  pthread_mutex_unlock(&lock);
  if (last) free_handle(handle);
}

// Room for up to `most` more spares, claimed. Lock held.
static int claim_locked(netns_handle *handle, int most) {
  int room = handle->cached ? NETNS_SPARES_MAX - handle->spare_count - handle->spares_claimed : 0;
  int claim = room < most ? room : most;
  if (claim < 0) claim = 0;
  handle->spares_claimed += claim;
  return claim;
}

int netns_claim_spares(netns_handle *handle, int most) {
  pthread_mutex_lock(&lock);
  int claim = claim_locked(handle, most);
  pthread_mutex_unlock(&lock);
  return claim;
}

void netns_add_spares(netns_handle *handle, const int *fds, int count, int claimed) {
  int i = 0;
  pthread_mutex_lock(&lock);
  handle->spares_claimed -= claimed;
  // A handle out of the cache hands none out: they would only keep its namespace alive.
  for (; handle->cached && i < count && handle->spare_count < NETNS_SPARES_MAX; i++) {
    handle->spares[handle->spare_count++] = fds[i];
  }
  pthread_mutex_unlock(&lock);
  for (; i < count; i++) close(fds[i]);
}

int netns_take_spare(const char *path, netns_handle **refill, int *refill_count) {
  int fd = -1;
  *refill = NULL;
  *refill_count = 0;
  pthread_mutex_lock(&lock);
  netns_handle *found = find_locked(path);
  if (found != NULL && found->spare_count > 0) {
    fd = found->spares[--found->spare_count];
    found->last_used_ms = monotonic_ms();
    if (found->spare_count + found->spares_claimed < NETNS_SPARES_LOW) {
      *refill_count = claim_locked(found, NETNS_SPARES_MAX);
      found->users++;
      *refill = found;
    }
  }
  pthread_mutex_unlock(&lock);
  return fd;
}

// ---- JavaScript ------------------------------------------------------------------------

// forgetNetns(path?) -> handles dropped: the one of `path`, or all of them.
static napi_value forget_netns(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char path[4096];
  int all = 1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc >= 1) {
    napi_valuetype type;
    napi_typeof(env, argv[0], &type);
    if (type == napi_string) {
      size_t len = 0;
      napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len);
      if (len == 0 || len >= sizeof path - 1) {
        napi_throw_type_error(env, NULL, "forgetNetns(path) takes a non-empty path shorter than 4095 bytes");
        return NULL;
      }
      all = 0;
    } else if (type != napi_undefined) {
      napi_throw_type_error(env, NULL, "forgetNetns(path?) takes a path or nothing");
      return NULL;
    }
  }
  int dropped = 0;
  pthread_mutex_lock(&lock);
  for (netns_handle *h = cache, *next; h != NULL; h = next) {
    next = h->next;
    if (all || strcmp(h->path, path) == 0) {
      drop_locked(h);
      dropped++;
    }
  }
  pthread_mutex_unlock(&lock);
  napi_value result;
  napi_create_int32(env, dropped, &result);
  return result;
}

// closeIdleNetns(idleMs) -> handles still cached, after closing those unused for idleMs.
static napi_value close_idle_netns(napi_env env, napi_callback_info info) {
  int32_t idle_ms = one_natural_argument(env, info, "closeIdleNetns(idleMs) takes a non-negative integer");
  if (idle_ms < 0) return NULL;
  long long now = monotonic_ms();
  pthread_mutex_lock(&lock);
  for (netns_handle *h = cache, *next; h != NULL; h = next) {
    next = h->next;
    if (h->users == 0 && now - h->last_used_ms >= idle_ms) drop_locked(h);
  }
  int left = cached_count;
  pthread_mutex_unlock(&lock);
  napi_value result;
  napi_create_int32(env, left, &result);
  return result;
}

void register_netns_handles(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "forgetNetns", NAPI_AUTO_LENGTH, forget_netns, NULL, &fn);
  napi_set_named_property(env, exports, "forgetNetns", fn);
  napi_create_function(env, "closeIdleNetns", NAPI_AUTO_LENGTH, close_idle_netns, NULL, &fn);
  napi_set_named_property(env, exports, "closeIdleNetns", fn);
}
