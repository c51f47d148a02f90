// An experiment, not part of vvfs: one 4 GiB file "/f" in RAM served over
// libfuse 3 (multithreaded), with or without the kernel's writeback cache
// (WB=1), to measure how far the FUSE transport alone bounds ext4 on a loop
// device (bench/scripts/ext4-dd-transport.sh; docs/performance.md, "What
// bounds two of the missed targets"). Needs libfuse3-dev.
#define FUSE_USE_VERSION 35
#include <fuse3/fuse.h>
#include <string.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
static const size_t SIZE = 4ULL << 30;
static char *mem;
static int wb;
static void *ram_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
  cfg->kernel_cache = 0; cfg->direct_io = 0; cfg->use_ino = 1;
  if (wb && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  conn->max_write = 1 << 20;
  return NULL;
}
static int ram_getattr(const char *p, struct stat *st, struct fuse_file_info *fi) {
  memset(st, 0, sizeof *st);
  if (!strcmp(p, "/")) { st->st_mode = 040755; st->st_nlink = 2; return 0; }
  if (!strcmp(p, "/f")) { st->st_mode = 0100600; st->st_nlink = 1; st->st_size = SIZE; return 0; }
  return -ENOENT;
}
static int ram_open(const char *p, struct fuse_file_info *fi) { return strcmp(p, "/f") ? -ENOENT : 0; }
static int ram_read(const char *p, char *buf, size_t n, off_t off, struct fuse_file_info *fi) {
  if (off >= (off_t) SIZE) return 0;
  if (off + n > SIZE) n = SIZE - off;
  memcpy(buf, mem + off, n);
  return n;
}
static int ram_write(const char *p, const char *buf, size_t n, off_t off, struct fuse_file_info *fi) {
  if (off + n > SIZE) return -EFBIG;
  memcpy(mem + off, buf, n);
  return n;
}
static int ram_fsync(const char *p, int d, struct fuse_file_info *fi) { return 0; }
static int ram_flush(const char *p, struct fuse_file_info *fi) { return 0; }
static int ram_fallocate(const char *p, int mode, off_t off, off_t len, struct fuse_file_info *fi) { return 0; }
static int ram_readdir(const char *p, void *b, fuse_fill_dir_t f, off_t o, struct fuse_file_info *fi, enum fuse_readdir_flags fl) {
  f(b, ".", NULL, 0, 0); f(b, "..", NULL, 0, 0); f(b, "f", NULL, 0, 0); return 0;
}
static int ram_truncate(const char *p, off_t s, struct fuse_file_info *fi) { return 0; }
static int ram_utimens(const char *p, const struct timespec tv[2], struct fuse_file_info *fi) { return 0; }
static int ram_chmod(const char *p, mode_t m, struct fuse_file_info *fi) { return 0; }
static const struct fuse_operations ops = { .truncate = ram_truncate, .utimens = ram_utimens, .chmod = ram_chmod, .init = ram_init, .getattr = ram_getattr, .open = ram_open, .read = ram_read,
  .write = ram_write, .fsync = ram_fsync, .flush = ram_flush, .readdir = ram_readdir, .fallocate = ram_fallocate };
int main(int argc, char **argv) {
  wb = getenv("WB") && atoi(getenv("WB"));
  mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return fuse_main(argc, argv, &ops, NULL);
}
