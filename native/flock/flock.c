/*
 * flock: an exclusive advisory lock on an open file, which Node has no API
 * for — flock(fd, LOCK_EX | LOCK_NB). The catalog (lib/manager/catalog.ts)
 * takes it on STATE/catalog.lock around each commit, so two processes never
 * commit over each other; the kernel drops it when the fd closes or the
 * process dies (kill -9 included), so a crashed holder never wedges others.
 *
 * tryLockExclusive(fd) → true (taken) | false (held by another open file
 * description; retry later); throws with errno's text on anything else.
 * unlock(fd) releases it. Never blocks: the caller polls, so the event loop
 * does not wait in the kernel.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static int fd_arg(napi_env env, napi_callback_info info, int32_t *fd) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_int32(env, argv[0], fd) != napi_ok || *fd < 0) {
    napi_throw_type_error(env, NULL, "fd must be a non-negative integer");
    return 0;
  }
  return 1;
}

static napi_value try_lock_exclusive(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!fd_arg(env, info, &fd)) return NULL;
  int rc;
  do rc = flock(fd, LOCK_EX | LOCK_NB);
  while (rc != 0 && errno == EINTR);
  if (rc != 0 && errno != EWOULDBLOCK) return throw_errno(env, "flock(LOCK_EX)", errno);
  napi_value out;
  napi_get_boolean(env, rc == 0, &out);
  return out;
}

static napi_value unlock(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!fd_arg(env, info, &fd)) return NULL;
  if (flock(fd, LOCK_UN) != 0) return throw_errno(env, "flock(LOCK_UN)", errno);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "tryLockExclusive", NAPI_AUTO_LENGTH, try_lock_exclusive, NULL, &fn);
  napi_set_named_property(env, exports, "tryLockExclusive", fn);
  napi_create_function(env, "unlock", NAPI_AUTO_LENGTH, unlock, NULL, &fn);
  napi_set_named_property(env, exports, "unlock", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
