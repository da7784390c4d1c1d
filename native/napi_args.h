// Argument checks shared by the addon's functions.

#ifndef NAPI_ARGS_H
#define NAPI_ARGS_H

#include <node_api.h>
#include <stdint.h>

// The one argument of a call, a non-negative int32 (an fd, a duration), or -1 with a
// JavaScript TypeError saying `usage` pending.
static inline int32_t one_natural_argument(napi_env env, napi_callback_info info, const char *usage) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t value = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_int32(env, argv[0], &value) != napi_ok || value < 0) {
    napi_throw_type_error(env, NULL, usage);
    return -1;
  }
  return value;
}

#endif
