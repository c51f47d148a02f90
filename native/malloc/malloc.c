/*
 * malloc: glibc's allocator settings for a long-running vvfs process —
 * mallopt(3), which Node has no API for. Why and the figures:
 * lib/malloc-tuning.ts.
 *
 * limitArenas(n) → true if glibc took it: at most n malloc arenas from now
 * on (M_ARENA_MAX; threads that start later share them).
 * No state of its own; safe from the JS thread at any time.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <node_api.h>

static napi_value limit_arenas(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_int32(env, argv[0], &n) != napi_ok || n < 1) {
    napi_throw_type_error(env, NULL, "limitArenas(n): n must be a positive integer");
    return NULL;
  }
  napi_value out;
  napi_get_boolean(env, mallopt(M_ARENA_MAX, n) == 1, &out);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "limitArenas", NAPI_AUTO_LENGTH, limit_arenas, NULL, &fn);
  napi_set_named_property(env, exports, "limitArenas", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
