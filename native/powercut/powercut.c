/*
 * powercut: an LD_PRELOAD interposer that records what a process made
 * durable, so a test can cut the power under it afterwards
 * (test/helpers/powercut.ts). Modelled on LevelDB's
 * db/fault_injection_test.cc, which tracks per file what was synced and drops
 * the rest, and which files were created since their directory was synced.
 *
 * Active only when VVFS_POWERCUT_LOG names a file; otherwise every call goes
 * straight to libc. Each event is one line appended with a single write() to
 * that file, opened O_APPEND: lines from several threads (libuv's pool,
 * LevelDB's background threads, worker_threads) and processes never
 * interleave, and a line written before a kill -9 is in the page cache, which
 * a process crash does not lose (the cut is applied after the process is
 * dead). Files are named by device and inode, so renames need no following
 * for their data; paths in the namespace events are absolute (the parent
 * directory resolved through /proc/self/fd) so the cut can undo them.
 *
 * File data:
 *   sync <dev> <ino> <size> <covers> <path>
 *                                       fsync/fdatasync of a regular file
 *                                       returned 0; size is from fstat before
 *                                       the call (bytes appended while it ran
 *                                       are not counted: the conservative side),
 *                                       covers as for dirsync (the journal
 *                                       commit it may force covers the events
 *                                       logged before it began)
 *   truncate <dev> <ino> <len> <path>   ftruncate/truncate, or open(O_TRUNC) or
 *                                       fopen("w") of an existing file (len 0)
 *   gone <dev> <ino> <path>             the last name of a regular file was
 *                                       unlinked or renamed over and no shadow
 *                                       link could keep it (its inode number
 *                                       may be reused by a new file)
 * Directory entries (<pdev> <pino>: the parent directory):
 *   create <kind> <pdev> <pino> <dev> <ino> <path>
 *                                       a new name: kind file (open O_CREAT or
 *                                       fopen "w"/"a" of a path that did not
 *                                       exist), dir (mkdir), link, symlink
 *   unlink <kind> <pdev> <pino> <dev> <ino> <shadowed> <path>
 *                                       a name removed (kind file, dir, symlink,
 *                                       other: a socket, fifo or device, whose
 *                                       bind()/mknod is not logged, so the cut
 *                                       ignores it); shadowed 1: the inode was
 *                                       hard-linked into the shadow directory
 *                                       first, so a cut can bring it back
 *   rename <fpdev> <fpino> <tpdev> <tpino> <dev> <ino> <vdev> <vino> <from>\t<to>
 *                                       <vdev> <vino>: the inode it replaced,
 *                                       shadowed first ("- -": none; "? ?": one
 *                                       that could not be shadowed, a directory)
 *   exchange <from>\t<to>               renameat2(RENAME_EXCHANGE): not modelled
 *   dirsync <dev> <ino> <covers> <path> fsync/fdatasync of a directory returned
 *                                       0; covers: the log's size before the
 *                                       call, so only events logged before it
 *                                       began count as synced by it
 *   syncall                             sync()/syncfs(): not modelled
 *   osync <dev> <ino> <path>            opened O_SYNC/O_DSYNC: not modelled
 *   unmodelled <what>                   an event too long for one line
 *
 * The shadow directory is VVFS_POWERCUT_LOG with ".shadow" appended (next to
 * the log, outside the tracked directory, on the same file system in the
 * tests): before a name of a non-directory is removed (unlink, or a rename
 * over it) the inode is hard-linked there as <dev>-<ino>, so it keeps its
 * data and its inode number. The shadow lives until the cut (the tracker
 * empties it): a process deleting many large files leaves their blocks
 * allocated until then (the most at one cut in the power-cut cases of
 * crash, migration-crash and prefix-kills: 99 files, 191 MB apparent size,
 * 2026-12-04).
 *
 * Concurrency: no locks; each event is one write() of a line built on the
 * stack. The real functions are looked up once with dlsym(RTLD_NEXT) (a race
 * stores the same pointer twice); the log, the shadow links and the parent
 * look-ups go through syscall() so they are never logged themselves. errno is
 * preserved for the caller.
 *
 * Failure modes: an event is logged only after the real call succeeded, so a
 * process killed inside fsync() counts that sync as not done (the caller
 * never saw it return), and one killed between a rename and its log line has
 * the rename counted as durable-as-it-is (not undone: the milder side, a
 * window of a few microseconds). A failed log write is ignored (the log
 * would then under-report syncs: the cut is harsher than reality, never
 * milder). A shadow link left by a call that then failed is removed.
 * sync_file_range is deliberately not intercepted: it makes nothing durable
 * (no metadata, no disk cache flush). Files created by libc internally other
 * than through fopen (tmpfile, freopen) and O_TMPFILE files are not seen.
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

#define PATH_CAP 4096

static int log_fd = -2; /* -2: not looked at yet, -1: inactive */
static char shadow_dir[PATH_CAP];

static int logfd(void) {
  if (log_fd == -2) {
    const char *path = getenv("VVFS_POWERCUT_LOG");
    int fd = -1;
    if (path && *path) {
      fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
      snprintf(shadow_dir, sizeof shadow_dir, "%s.shadow", path);
    }
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

/* One namespace event line; one too long for a line is logged as unmodelled. */
static void emitf(const char *what, const char *fmt, ...) {
  char line[2 * PATH_CAP + 256];
  va_list ap;
  va_start(ap, fmt);
  int len = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (len < 0 || len >= (int)sizeof line) {
    len = snprintf(line, sizeof line, "unmodelled %s\n", what);
  }
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
    if (out[i] == '\n' || out[i] == '\t') out[i] = '?';
}

static void event_fd(const char *what, int fd, long long size) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
  char path[PATH_CAP];
  fd_path(fd, path, sizeof path);
  event_st(what, &st, size, path);
}

/*
 * A sync: size from fstat before the real call, logged after it returned 0.
 * A directory's sync covers the events logged before it began.
 */
static int synced(int (*real)(int), int fd) {
  if (logfd() < 0) return real(fd);
  struct stat st, logst;
  int ok = fstat(fd, &st) == 0;
  int file = ok && S_ISREG(st.st_mode);
  int logged = fstat(log_fd, &logst) == 0;
  int dir = ok && S_ISDIR(st.st_mode) && logged;
  int rc = real(fd);
  if (rc == 0 && (file || dir)) {
    int saved = errno;
    char path[PATH_CAP];
    fd_path(fd, path, sizeof path);
    if (file) {
      char line[PATH_CAP + 128];
      int len = snprintf(line, sizeof line, "sync %llu %llu %lld %lld %s\n", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino, (long long)st.st_size,
                         (long long)(logged ? logst.st_size : 0), path);
      emit(line, len < (int)sizeof line ? len : (int)sizeof line - 1);
    } else {
      event_st("dirsync", &st, (long long)logst.st_size, path);
    }
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

/*
 * Names. A name is (dirfd, path) as the caller gave it; where() resolves its
 * parent directory (dev, ino and absolute path) without following the last
 * component, so the cut can find the entry again.
 */
struct name {
  int ok;
  struct stat parent;
  char abs[PATH_CAP];
};

static void where(int dirfd, const char *path, struct name *n) {
  n->ok = 0;
  char buf[PATH_CAP];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf || !*buf) return;
  size_t len = strlen(buf);
  while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;
  char *slash = strrchr(buf, '/');
  const char *parent = ".", *base = buf;
  if (slash == buf) {
    parent = "/";
    base = buf + 1;
  } else if (slash) {
    *slash = 0;
    parent = buf;
    base = slash + 1;
  }
  if (!*base || strchr(base, '\t') || strchr(base, '\n')) return;
  int pfd = (int)syscall(SYS_openat, dirfd, parent, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (pfd < 0) return;
  char pabs[PATH_CAP];
  if (fstat(pfd, &n->parent) == 0) {
    fd_path(pfd, pabs, sizeof pabs);
    int w = snprintf(n->abs, sizeof n->abs, "%s/%s", strcmp(pabs, "/") == 0 ? "" : pabs, base);
    n->ok = *pabs == '/' && w < (int)sizeof n->abs;
  }
  syscall(SYS_close, pfd);
}

/* What a name is before a call changes it: lstat, errno preserved. */
struct entry {
  int exists;
  struct stat st;
};

static void peek(int dirfd, const char *path, struct entry *e) {
  int saved = errno;
  e->exists = fstatat(dirfd, path, &e->st, AT_SYMLINK_NOFOLLOW) == 0;
  errno = saved;
}

static const char *kind_of(const struct stat *st) {
  if (S_ISREG(st->st_mode)) return "file";
  if (S_ISDIR(st->st_mode)) return "dir";
  if (S_ISLNK(st->st_mode)) return "symlink";
  return "other";
}

/*
 * Hard-links the inode behind (dirfd, path) into the shadow directory as
 * <dev>-<ino>. Returns 2 if it made the link, 1 if one was there already
 * (the same inode: its number cannot be reused while the shadow holds it),
 * 0 if it could not or need not (a directory, a socket, another file
 * system).
 */
static int shadow(int dirfd, const char *path, const struct entry *e) {
  if (!e->exists || !(S_ISREG(e->st.st_mode) || S_ISLNK(e->st.st_mode))) return 0;
  char dst[PATH_CAP + 64];
  snprintf(dst, sizeof dst, "%s/%llu-%llu", shadow_dir, (unsigned long long)e->st.st_dev, (unsigned long long)e->st.st_ino);
  syscall(SYS_mkdirat, AT_FDCWD, shadow_dir, 0700);
  if (syscall(SYS_linkat, dirfd, path, AT_FDCWD, dst, 0) == 0) return 2;
  return errno == EEXIST ? 1 : 0;
}

static void unshadow(const struct entry *e, int made) {
  if (made != 2) return;
  char dst[PATH_CAP + 64];
  snprintf(dst, sizeof dst, "%s/%llu-%llu", shadow_dir, (unsigned long long)e->st.st_dev, (unsigned long long)e->st.st_ino);
  syscall(SYS_unlinkat, AT_FDCWD, dst, 0);
}

/* A regular file losing its last name with no shadow to keep it is "gone". */
static void gone(const struct entry *v, const char *path) {
  if (!v->exists || !S_ISREG(v->st.st_mode) || v->st.st_nlink != 1) return;
  event_st("gone", &v->st, -1, path);
}

static void created(const char *kind, int dirfd, const char *path, const struct stat *st) {
  struct name n;
  where(dirfd, path, &n);
  if (!n.ok) {
    emitf("create", "unmodelled create %s\n", kind);
    return;
  }
  emitf("create", "create %s %llu %llu %llu %llu %s\n", kind, (unsigned long long)n.parent.st_dev, (unsigned long long)n.parent.st_ino,
        (unsigned long long)st->st_dev, (unsigned long long)st->st_ino, n.abs);
}

/* After a call that made a new name at (dirfd, path): log it. */
static void created_at(const char *kind, int dirfd, const char *path) {
  if (logfd() < 0) return;
  int saved = errno;
  struct stat st;
  if (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0) created(kind, dirfd, path, &st);
  errno = saved;
}

/* unlink/rmdir/remove: shadow, remove, log. */
static int removed(int dirfd, const char *path, int (*call)(int, const char *, int), int flags) {
  if (logfd() < 0) return call(dirfd, path, flags);
  int before = errno;
  struct entry e;
  struct name n;
  peek(dirfd, path, &e);
  where(dirfd, path, &n);
  int made = e.exists ? shadow(dirfd, path, &e) : 0;
  errno = before;
  int rc = call(dirfd, path, flags);
  int saved = errno;
  if (rc != 0) {
    unshadow(&e, made);
  } else if (e.exists) {
    if (!made) gone(&e, path);
    if (n.ok)
      emitf("unlink", "unlink %s %llu %llu %llu %llu %d %s\n", kind_of(&e.st), (unsigned long long)n.parent.st_dev, (unsigned long long)n.parent.st_ino,
            (unsigned long long)e.st.st_dev, (unsigned long long)e.st.st_ino, made ? 1 : 0, n.abs);
    else
      emitf("unlink", "unmodelled unlink\n");
  }
  errno = saved;
  return rc;
}

static int call_unlinkat(int dirfd, const char *path, int flags) {
  REAL(unlinkat);
  return real_unlinkat(dirfd, path, flags);
}

static int call_unlink(int dirfd, const char *path, int flags) {
  (void)dirfd;
  (void)flags;
  REAL(unlink);
  return real_unlink(path);
}

static int call_rmdir(int dirfd, const char *path, int flags) {
  (void)dirfd;
  (void)flags;
  REAL(rmdir);
  return real_rmdir(path);
}

static int call_remove(int dirfd, const char *path, int flags) {
  (void)dirfd;
  (void)flags;
  REAL(remove);
  return real_remove(path);
}

int unlink(const char *path) { return removed(AT_FDCWD, path, call_unlink, 0); }
int unlinkat(int dirfd, const char *path, int flags) { return removed(dirfd, path, call_unlinkat, flags); }
int rmdir(const char *path) { return removed(AT_FDCWD, path, call_rmdir, 0); }
int remove(const char *path) { return removed(AT_FDCWD, path, call_remove, 0); }

/* rename: the displaced inode (if any) is shadowed before, the move logged after. */
static int moved(int fromfd, const char *from, int tofd, const char *to, unsigned int flags) {
  REAL(renameat2);
  REAL(renameat);
  int plain = flags == 0;
  if (logfd() < 0) return plain ? real_renameat(fromfd, from, tofd, to) : real_renameat2(fromfd, from, tofd, to, flags);
  int before = errno;
  struct entry m, v;
  struct name nf, nt;
  peek(fromfd, from, &m);
  peek(tofd, to, &v);
  where(fromfd, from, &nf);
  where(tofd, to, &nt);
  int exchange = (flags & RENAME_EXCHANGE) != 0;
  /* Renaming a file onto another name of itself removes nothing. */
  int self = m.exists && v.exists && m.st.st_dev == v.st.st_dev && m.st.st_ino == v.st.st_ino;
  int displaced = v.exists && !self && !exchange;
  int made = displaced ? shadow(tofd, to, &v) : 0;
  errno = before;
  int rc = plain ? real_renameat(fromfd, from, tofd, to) : real_renameat2(fromfd, from, tofd, to, flags);
  int saved = errno;
  if (rc != 0) {
    unshadow(&v, made);
  } else if (exchange) {
    emitf("exchange", "exchange %s\t%s\n", nf.ok ? nf.abs : "?", nt.ok ? nt.abs : "?");
  } else if (!nf.ok || !nt.ok || !m.exists) {
    emitf("rename", "unmodelled rename\n");
  } else if (!self) {
    if (displaced && !made) gone(&v, to);
    char vic[64];
    if (!displaced) snprintf(vic, sizeof vic, "- -");
    else if (!made) snprintf(vic, sizeof vic, "? ?");
    else snprintf(vic, sizeof vic, "%llu %llu", (unsigned long long)v.st.st_dev, (unsigned long long)v.st.st_ino);
    emitf("rename", "rename %llu %llu %llu %llu %llu %llu %s %s\t%s\n", (unsigned long long)nf.parent.st_dev, (unsigned long long)nf.parent.st_ino,
          (unsigned long long)nt.parent.st_dev, (unsigned long long)nt.parent.st_ino, (unsigned long long)m.st.st_dev, (unsigned long long)m.st.st_ino, vic,
          nf.abs, nt.abs);
  }
  errno = saved;
  return rc;
}

int rename(const char *from, const char *to) { return moved(AT_FDCWD, from, AT_FDCWD, to, 0); }
int renameat(int fromfd, const char *from, int tofd, const char *to) { return moved(fromfd, from, tofd, to, 0); }
int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags) { return moved(fromfd, from, tofd, to, flags); }

/* New names other than files: mkdir, link, symlink. */
int mkdir(const char *path, mode_t mode) {
  REAL(mkdir);
  int rc = real_mkdir(path, mode);
  if (rc == 0) created_at("dir", AT_FDCWD, path);
  return rc;
}

int mkdirat(int dirfd, const char *path, mode_t mode) {
  REAL(mkdirat);
  int rc = real_mkdirat(dirfd, path, mode);
  if (rc == 0) created_at("dir", dirfd, path);
  return rc;
}

int link(const char *from, const char *to) {
  REAL(link);
  int rc = real_link(from, to);
  if (rc == 0) created_at("link", AT_FDCWD, to);
  return rc;
}

int linkat(int fromfd, const char *from, int tofd, const char *to, int flags) {
  REAL(linkat);
  int rc = real_linkat(fromfd, from, tofd, to, flags);
  if (rc == 0) created_at("link", tofd, to);
  return rc;
}

int symlink(const char *target, const char *path) {
  REAL(symlink);
  int rc = real_symlink(target, path);
  if (rc == 0) created_at("symlink", AT_FDCWD, path);
  return rc;
}

int symlinkat(const char *target, int dirfd, const char *path) {
  REAL(symlinkat);
  int rc = real_symlinkat(target, dirfd, path);
  if (rc == 0) created_at("symlink", dirfd, path);
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

/*
 * Opens: O_TRUNC empties an existing file; O_CREAT of a path that did not
 * exist makes a new name; O_SYNC/O_DSYNC is not modelled.
 */
static int existed(int dirfd, const char *path, int flags) {
  if (!(flags & O_CREAT) || logfd() < 0) return 1;
  int saved = errno;
  struct stat st;
  int there = fstatat(dirfd, path, &st, 0) == 0;
  errno = saved;
  return there;
}

static int opened(int fd, int flags, int dirfd, const char *path, int was_there) {
  if (fd < 0 || logfd() < 0) return fd;
  int saved = errno;
  if (!was_there) {
    struct stat st;
    if (fstat(fd, &st) == 0) created("file", dirfd, path, &st);
  }
  errno = saved;
  if (flags & O_TRUNC) truncated(fd, 0);
  if (flags & (O_SYNC | O_DSYNC)) {
    saved = errno;
    event_fd("osync", fd, -1);
    errno = saved;
  }
  return fd;
}

static mode_t mode_arg(int flags, va_list ap) {
  return ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) ? (mode_t)va_arg(ap, int) : 0;
}

#define OPEN_AT(name, dirfd_expr, ...)                              \
  REAL(name);                                                       \
  va_list ap;                                                       \
  va_start(ap, flags);                                              \
  mode_t mode = mode_arg(flags, ap);                                \
  va_end(ap);                                                       \
  int was_there = existed(dirfd_expr, path, flags);                 \
  return opened(real_##name(__VA_ARGS__), flags, dirfd_expr, path, was_there)

int open(const char *path, int flags, ...) { OPEN_AT(open, AT_FDCWD, path, flags, mode); }
int open64(const char *path, int flags, ...) { OPEN_AT(open64, AT_FDCWD, path, flags, mode); }
int openat(int dirfd, const char *path, int flags, ...) { OPEN_AT(openat, dirfd, dirfd, path, flags, mode); }
int openat64(int dirfd, const char *path, int flags, ...) { OPEN_AT(openat64, dirfd, dirfd, path, flags, mode); }

int creat(const char *path, mode_t mode) { return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

int creat64(const char *path, mode_t mode) { return open64(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

/* The fortified variants (_FORTIFY_SOURCE) of a two-argument open. */
int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) { return open64(path, flags); }
int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
int __openat64_2(int dirfd, const char *path, int flags) { return openat64(dirfd, path, flags); }

/*
 * stdio opens the file inside libc, past this interposer's open: fopen("w"),
 * ("a") may create it and "w" empties it (LevelDB's logs, MANIFEST, CURRENT's
 * temporary file).
 */
static FILE *fopened(FILE *f, const char *path, const char *mode, int was_there) {
  if (f && logfd() >= 0) opened(fileno(f), mode[0] == 'w' ? O_TRUNC : 0, AT_FDCWD, path, was_there);
  return f;
}

FILE *fopen(const char *path, const char *mode) {
  REAL(fopen);
  int creates = mode[0] == 'w' || mode[0] == 'a';
  int was_there = creates ? existed(AT_FDCWD, path, O_CREAT) : 1;
  return fopened(real_fopen(path, mode), path, mode, was_there);
}

FILE *fopen64(const char *path, const char *mode) {
  REAL(fopen64);
  int creates = mode[0] == 'w' || mode[0] == 'a';
  int was_there = creates ? existed(AT_FDCWD, path, O_CREAT) : 1;
  return fopened(real_fopen64(path, mode), path, mode, was_there);
}
