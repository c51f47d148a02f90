/*
 * powercut: an LD_PRELOAD interposer that records what a process made
 * durable, so a test can cut the power under it afterwards
 * (test/helpers/powercut.ts). Modelled on LevelDB's
 * db/fault_injection_test.cc, which tracks per file what was synced and drops
 * the rest.
 *
 * Active only when VVFS_POWERCUT_LOG names a file; otherwise every call goes
 * straight to libc. Each event is one line appended with a single write() to
 * that file, opened O_APPEND: lines from several threads (libuv's pool,
 * LevelDB's background threads, worker_threads) and processes never
 * interleave, and a line written before a kill -9 is in the page cache, which
 * a process crash does not lose (the cut is applied after the process is
 * dead). Files are named by device and inode, so renames need no following;
 * the path is only for people reading the log.
 *
 *   sync <dev> <ino> <size> <path>      fsync/fdatasync of a regular file
 *                                       returned 0; size is from fstat before
 *                                       the call (bytes appended while it ran
 *                                       are not counted: the conservative side)
 *   truncate <dev> <ino> <len> <path>   ftruncate/truncate, or open(O_TRUNC)
 *                                       of an existing file (len 0)
 *   gone <dev> <ino> <path>             the last name of a file was unlinked
 *                                       or renamed over (its inode number may
 *                                       be reused by a new file)
 *   syncall                             sync()/syncfs(): not modelled
 *   osync <dev> <ino> <path>            opened O_SYNC/O_DSYNC: not modelled
 *
 * Concurrency: no locks; each event is one write() of a line built on the
 * stack. The real functions are looked up once with dlsym(RTLD_NEXT) (a race
 * stores the same pointer twice). errno is preserved for the caller.
 *
 * Failure modes: an event is logged only after the real call succeeded, so a
 * process killed inside fsync() counts that sync as not done (the caller
 * never saw it return). A failed log write is ignored (the log would then
 * under-report syncs: the cut is harsher than reality, never milder).
 * sync_file_range is deliberately not intercepted: it makes nothing durable
 * (no metadata, no disk cache flush). Writes through stdio's fopen() open
 * files inside libc, so an O_TRUNC there is not seen; LevelDB's fopen("w")
 * always creates a new file (file numbers are never reused).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int log_fd = -2; /* -2: not looked at yet, -1: inactive */

static int logfd(void) {
  if (log_fd == -2) {
    const char *path = getenv("VVFS_POWERCUT_LOG");
    int fd = -1;
    if (path && *path) fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    log_fd = fd;
  }
  return log_fd;
}

__attribute__((constructor)) static void powercut_init(void) { logfd(); }

#define REAL(name)                    \
  static __typeof__(name) *real_##name; \
  if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

static void emit(const char *line, int len) {
  if (len <= 0) return;
  if (len > 4096) len = 4096;
  ssize_t ignored = write(log_fd, line, (size_t)len);
  (void)ignored;
}

/* One event about the file behind fd (a regular file), or behind path. */
static void event_st(const char *what, const struct stat *st, long long size, const char *path) {
  char line[4200];
  int len;
  if (size >= 0)
    len = snprintf(line, sizeof line, "%s %llu %llu %lld %s\n", what, (unsigned long long)st->st_dev, (unsigned long long)st->st_ino, size, path);
  else
    len = snprintf(line, sizeof line, "%s %llu %llu %s\n", what, (unsigned long long)st->st_dev, (unsigned long long)st->st_ino, path);
  emit(line, len < (int)sizeof line ? len : (int)sizeof line - 1);
}

static void fd_path(int fd, char *out, size_t cap) {
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, out, cap - 1);
  if (n < 0) n = 0;
  out[n] = 0;
  for (ssize_t i = 0; i < n; i++)
    if (out[i] == '\n') out[i] = '?';
}

static void event_fd(const char *what, int fd, long long size) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
  char path[4096];
  fd_path(fd, path, sizeof path);
  event_st(what, &st, size, path);
}

/* A sync: size from fstat before the real call, logged after it returned 0. */
static int synced(int (*real)(int), int fd) {
  if (logfd() < 0) return real(fd);
  struct stat st;
  int tracked = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  int rc = real(fd);
  if (rc == 0 && tracked) {
    int saved = errno;
    char path[4096];
    fd_path(fd, path, sizeof path);
    event_st("sync", &st, (long long)st.st_size, path);
    errno = saved;
  }
  return rc;
}

int fsync(int fd) {
  REAL(fsync);
  return synced(real_fsync, fd);
}

int fdatasync(int fd) {
  REAL(fdatasync);
  return synced(real_fdatasync, fd);
}

static void syncall(void) {
  if (logfd() < 0) return;
  int saved = errno;
  emit("syncall\n", 8);
  errno = saved;
}

void sync(void) {
  REAL(sync);
  real_sync();
  syncall();
}

int syncfs(int fd) {
  REAL(syncfs);
  int rc = real_syncfs(fd);
  if (rc == 0) syncall();
  return rc;
}

/* Names: a regular file losing its last name is "gone". */
struct victim {
  int is_file;
  struct stat st;
  char path[4096];
};

static void look(int dirfd, const char *path, struct victim *v) {
  v->is_file = 0;
  if (logfd() < 0) return;
  int saved = errno;
  if (fstatat(dirfd, path, &v->st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(v->st.st_mode) && v->st.st_nlink == 1) {
    v->is_file = 1;
    snprintf(v->path, sizeof v->path, "%s", path);
  }
  errno = saved;
}

static void gone(const struct victim *v, const struct victim *mover) {
  if (!v->is_file) return;
  /* Renaming a file onto another name of itself removes nothing. */
  if (mover && mover->is_file && mover->st.st_dev == v->st.st_dev && mover->st.st_ino == v->st.st_ino) return;
  int saved = errno;
  event_st("gone", &v->st, -1, v->path);
  errno = saved;
}

int unlink(const char *path) {
  REAL(unlink);
  struct victim v;
  look(AT_FDCWD, path, &v);
  int rc = real_unlink(path);
  if (rc == 0) gone(&v, NULL);
  return rc;
}

int unlinkat(int dirfd, const char *path, int flags) {
  REAL(unlinkat);
  struct victim v;
  v.is_file = 0;
  if (!(flags & AT_REMOVEDIR)) look(dirfd, path, &v);
  int rc = real_unlinkat(dirfd, path, flags);
  if (rc == 0) gone(&v, NULL);
  return rc;
}

int remove(const char *path) {
  REAL(remove);
  struct victim v;
  look(AT_FDCWD, path, &v);
  int rc = real_remove(path);
  if (rc == 0) gone(&v, NULL);
  return rc;
}

int rename(const char *from, const char *to) {
  REAL(rename);
  struct victim v, m;
  look(AT_FDCWD, to, &v);
  look(AT_FDCWD, from, &m);
  int rc = real_rename(from, to);
  if (rc == 0) gone(&v, &m);
  return rc;
}

int renameat(int fromfd, const char *from, int tofd, const char *to) {
  REAL(renameat);
  struct victim v, m;
  look(tofd, to, &v);
  look(fromfd, from, &m);
  int rc = real_renameat(fromfd, from, tofd, to);
  if (rc == 0) gone(&v, &m);
  return rc;
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags) {
  REAL(renameat2);
  struct victim v, m;
  v.is_file = 0;
  if (!(flags & RENAME_EXCHANGE)) look(tofd, to, &v);
  look(fromfd, from, &m);
  int rc = real_renameat2(fromfd, from, tofd, to, flags);
  if (rc == 0) gone(&v, &m);
  return rc;
}

/* Truncations. */
static void truncated(int fd, long long len) {
  if (logfd() < 0) return;
  int saved = errno;
  event_fd("truncate", fd, len);
  errno = saved;
}

int ftruncate(int fd, off_t len) {
  REAL(ftruncate);
  int rc = real_ftruncate(fd, len);
  if (rc == 0) truncated(fd, (long long)len);
  return rc;
}

int ftruncate64(int fd, off64_t len) {
  REAL(ftruncate64);
  int rc = real_ftruncate64(fd, len);
  if (rc == 0) truncated(fd, (long long)len);
  return rc;
}

static void truncated_path(const char *path, long long len) {
  if (logfd() < 0) return;
  int saved = errno;
  struct stat st;
  if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) event_st("truncate", &st, len, path);
  errno = saved;
}

int truncate(const char *path, off_t len) {
  REAL(truncate);
  int rc = real_truncate(path, len);
  if (rc == 0) truncated_path(path, (long long)len);
  return rc;
}

int truncate64(const char *path, off64_t len) {
  REAL(truncate64);
  int rc = real_truncate64(path, len);
  if (rc == 0) truncated_path(path, (long long)len);
  return rc;
}

/* Opens: O_TRUNC empties an existing file; O_SYNC/O_DSYNC is not modelled. */
static int opened(int fd, int flags) {
  if (fd < 0 || logfd() < 0) return fd;
  if (flags & O_TRUNC) truncated(fd, 0);
  if (flags & (O_SYNC | O_DSYNC)) {
    int saved = errno;
    event_fd("osync", fd, -1);
    errno = saved;
  }
  return fd;
}

static mode_t mode_arg(int flags, va_list ap) {
  return ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
  REAL(open);
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return opened(real_open(path, flags, mode), flags);
}

int open64(const char *path, int flags, ...) {
  REAL(open64);
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return opened(real_open64(path, flags, mode), flags);
}

int openat(int dirfd, const char *path, int flags, ...) {
  REAL(openat);
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return opened(real_openat(dirfd, path, flags, mode), flags);
}

int openat64(int dirfd, const char *path, int flags, ...) {
  REAL(openat64);
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return opened(real_openat64(dirfd, path, flags, mode), flags);
}

int creat(const char *path, mode_t mode) { return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

int creat64(const char *path, mode_t mode) { return open64(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

/* The fortified variants (_FORTIFY_SOURCE) of a two-argument open. */
int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) { return open64(path, flags); }
int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
int __openat64_2(int dirfd, const char *path, int flags) { return openat64(dirfd, path, flags); }
