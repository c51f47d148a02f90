/**
 * The one place where vvfs error codes become errno values. A write to a full
 * pool is ENOSPC (so the file system on top reports "No space left"), a bad
 * range EINVAL, anything unexpected EIO — never a hang.
 */
import { asVvfsError, type ErrorCode } from '../errors.js'

export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ERANGE: 34,
  ENOSYS: 38,
  ENODATA: 61,
  EOPNOTSUPP: 95,
  ETIMEDOUT: 110,
} as const

const BY_CODE: Partial<Record<ErrorCode, number>> = {
  POOL_FULL: ERRNO.ENOSPC,
  STORAGE_FULL: ERRNO.ENOSPC,
  OUT_OF_RANGE: ERRNO.EINVAL,
  INVALID_ARGUMENT: ERRNO.EINVAL,
  INVALID_SIZE: ERRNO.EFBIG,
  VOLUME_NOT_FOUND: ERRNO.ENOENT,
  VOLUME_BUSY: ERRNO.EBUSY,
  NOT_SUPPORTED: ERRNO.EOPNOTSUPP,
  TIMEOUT: ERRNO.ETIMEDOUT,
  /** A size change lost the catalog's compare-and-swap every time (another process kept committing). */
  CATALOG_CONFLICT: ERRNO.EBUSY,
  /** Issue 13: a replication secondary is read-only for hosts. */
  VOLUME_READ_ONLY: ERRNO.EROFS,
}

/** A negative errno, as fuse-native expects. */
export function errnoOf(err: unknown): number {
  return -(BY_CODE[asVvfsError(err).code] ?? ERRNO.EIO)
}
