/*
 * malloc: glibc's allocator settings and housekeeping for a long-running
 * vvfs process — mallopt(3) and malloc_trim(3), which Node has no API for.
 * Why and the figures: lib/malloc-tuning.ts.
 *
 * limitArenas(n) → true if glibc took it: at most n malloc arenas from now
 * on (M_ARENA_MAX; threads that start later share them).
 * trim() → a Promise of true if memory was given back: malloc_trim(0) on a
 * libuv pool thread (it walks every arena's free chunks and madvises their
 * whole pages away; each arena is locked while it is walked, so a thread
 * that allocates from it meanwhile — the JS thread included, for the main
 * arena — waits).
 * reexec(nodeFlags?) → starts this process's program again in its place
 * (execve of its binary: same pid and name, same arguments from
 * /proc/self/cmdline with nodeFlags put after the program's path, the
 * environment as it is now, so what the caller set in process.env is there
 * from the first instruction — glibc reads MALLOC_ARENA_MAX only then — and
 * the standard streams, which Node marks close-on-exec, kept open; SIGPROF
 * ignored across it, as a profiler's pending one would kill the new image).
 * Returns only if it failed, by throwing (code EXEC_FAILED).
 * No state of their own beyond one trim's work item; call from the JS thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>

extern char **environ;

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

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int released;
} trim_job;

static void trim_execute(napi_env env, void *data) {
  (void)env;
  trim_job *job = data;
  job->released = malloc_trim(0);
}

static void trim_complete(napi_env env, napi_status status, void *data) {
  trim_job *job = data;
  napi_value out;
  if (status == napi_ok) {
    napi_get_boolean(env, job->released == 1, &out);
    napi_resolve_deferred(env, job->deferred, out);
  } else {
    napi_value msg;
    napi_create_string_utf8(env, "malloc_trim was cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &out);
    napi_reject_deferred(env, job->deferred, out);
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value trim(napi_env env, napi_callback_info info) {
  (void)info;
  trim_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, NULL, "trim(): out of memory");
    return NULL;
  }
  napi_value promise, name;
  if (napi_create_string_utf8(env, "vvfs:malloc_trim", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, trim_execute, trim_complete, job, &job->work) != napi_ok) {
    free(job);
    napi_throw_error(env, NULL, "trim(): could not create the work");
    return NULL;
  }
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok) {
    napi_delete_async_work(env, job->work);
    free(job);
    napi_throw_error(env, NULL, "trim(): could not create the promise");
    return NULL;
  }
  if (napi_queue_async_work(env, job->work) != napi_ok) {
    napi_value err, msg;
    napi_create_string_utf8(env, "trim(): could not queue the work", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
    napi_reject_deferred(env, job->deferred, err);
    napi_delete_async_work(env, job->work);
    free(job);
  }
  return promise;
}

static napi_value exec_failed(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "reexec: %s: %s", what, strerror(err));
  napi_throw_error(env, "EXEC_FAILED", msg);
  return NULL;
}

static napi_value reexec_with(napi_env env, const char *flags, size_t nflags);

/* The optional first argument of reexec: an array of strings, as one buffer of NUL-ended strings (NULL: none). */
static char *node_flags_of(napi_env env, napi_callback_info info, size_t *count, int *bad) {
  size_t argc = 1;
  napi_value argv[1];
  bool is_array = false;
  uint32_t n = 0;
  *count = 0;
  *bad = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) return NULL;
  napi_valuetype type;
  if (napi_typeof(env, argv[0], &type) != napi_ok || type == napi_undefined) return NULL;
  if (napi_is_array(env, argv[0], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[0], &n) != napi_ok) {
    *bad = 1;
    return NULL;
  }
  size_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    size_t len;
    if (napi_get_element(env, argv[0], i, &v) != napi_ok || napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
      *bad = 1;
      return NULL;
    }
    total += len + 1;
  }
  char *flags = malloc(total + 1);
  if (flags == NULL) {
    *bad = 1;
    return NULL;
  }
  size_t at = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    size_t len = 0;
    /* Each string again, within what the first pass measured; one that changed, or holds a NUL, is refused. */
    if (napi_get_element(env, argv[0], i, &v) != napi_ok || napi_get_value_string_utf8(env, v, flags + at, total + 1 - at, &len) != napi_ok ||
        at + len + 1 > total || strlen(flags + at) != len) {
      free(flags);
      *bad = 1;
      return NULL;
    }
    at += len + 1;
  }
  *count = n;
  return flags;
}

static napi_value reexec(napi_env env, napi_callback_info info) {
  size_t nflags;
  int bad;
  char *flags = node_flags_of(env, info, &nflags, &bad);
  if (bad) {
    napi_throw_type_error(env, NULL, "reexec(nodeFlags): nodeFlags must be an array of strings");
    return NULL;
  }
  napi_value failed = reexec_with(env, flags, nflags);
  free(flags);
  return failed;
}

/* execve of this program with its own arguments, `nflags` strings from `flags` after the first; returns only on failure. */
static napi_value reexec_with(napi_env env, const char *flags, size_t nflags) {
  int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return exec_failed(env, "/proc/self/cmdline", errno);
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap + 1);
  for (;;) {
    if (buf == NULL) {
      close(fd);
      return exec_failed(env, "reading the arguments", ENOMEM);
    }
    ssize_t n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      free(buf);
      return exec_failed(env, "/proc/self/cmdline", err);
    }
    if (n == 0) break;
    len += (size_t)n;
    if (len == cap) {
      cap *= 2;
      char *more = realloc(buf, cap + 1);
      if (more == NULL) free(buf);
      buf = more;
    }
  }
  close(fd);
  if (len == 0) {
    free(buf);
    return exec_failed(env, "/proc/self/cmdline", ENOENT);
  }
  buf[len] = 0; /* a last argument without its NUL ends here */
  size_t argc = 0;
  for (size_t i = 0; i < len; i++)
    if (buf[i] == 0) argc++;
  if (buf[len - 1] != 0) argc++;
  char **argv = calloc(argc + nflags + 1, sizeof *argv);
  if (argv == NULL) {
    free(buf);
    return exec_failed(env, "the arguments", ENOMEM);
  }
  /* The program, then the flags given (node's own, before its script), then the rest as they were. */
  for (size_t i = 0, k = 0; i < len && k < argc; k++) {
    argv[k == 0 ? 0 : k + nflags] = buf + i;
    i += strlen(buf + i) + 1;
  }
  for (size_t f = 0, at = 0; f < nflags; f++) {
    argv[1 + f] = (char *)flags + at;
    at += strlen(flags + at) + 1;
  }
  /* Node marks its standard streams close-on-exec; the new image must get them, or it starts on /dev/null. */
  for (int fd = 0; fd <= 2; fd++) {
    int fd_flags = fcntl(fd, F_GETFD);
    if (fd_flags >= 0 && (fd_flags & FD_CLOEXEC)) fcntl(fd, F_SETFD, fd_flags & ~FD_CLOEXEC);
  }
  /* The binary by its own path, so that the process keeps its name (exec of /proc/self/exe names it "exe"). */
  char path[4096];
  ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  const char *exe = "/proc/self/exe";
  if (n > 0 && strstr(path, " (deleted)") == NULL) {
    path[n] = 0;
    exe = path;
  }
  /* A profiler's SIGPROF (node --cpu-prof) pending across the exec would kill the new image, whose handler is the default. */
  struct sigaction ignore = {0}, was;
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGPROF, &ignore, &was);
  execve(exe, argv, environ);
  int err = errno;
  sigaction(SIGPROF, &was, NULL);
  free(argv);
  free(buf);
  return exec_failed(env, "execve", err);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "limitArenas", NAPI_AUTO_LENGTH, limit_arenas, NULL, &fn);
  napi_set_named_property(env, exports, "limitArenas", fn);
  napi_create_function(env, "trim", NAPI_AUTO_LENGTH, trim, NULL, &fn);
  napi_set_named_property(env, exports, "trim", fn);
  napi_create_function(env, "reexec", NAPI_AUTO_LENGTH, reexec, NULL, &fn);
  napi_set_named_property(env, exports, "reexec", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
