/**
 * VvfsError: the one error type of vvfs. Every failure that can reach a user
 * carries a stable `code` (tests and scripts match on it; messages may change)
 * and, where it wraps a lower failure, a `cause`.
 *
 * Codes become errno only in lib/fuse and `{code, message}` only at the socket
 * and worker boundaries (an Error loses its class across postMessage).
 */

export const ERROR_CODES = [
  'INVALID_ARGUMENT',
  'INVALID_NAME',
  'INVALID_SIZE',
  'OUT_OF_RANGE',
  'VOLUME_NOT_FOUND',
  'VOLUME_EXISTS',
  'VOLUME_BUSY',
  'HOST_NOT_FOUND',
  'HOST_EXISTS',
  'HOST_BUSY',
  'NOT_MAPPED',
  'ALREADY_MAPPED',
  'STORAGE_NOT_FOUND',
  'STORAGE_EXISTS',
  'STORAGE_IN_USE',
  'STORAGE_PATH_IN_USE',
  'POOL_FULL',
  'STORAGE_FULL',
  'STATE_LOCKED',
  'STATE_CORRUPT',
  /** The catalog's compare-and-swap lost to another process every time it was tried. */
  'CATALOG_CONFLICT',
  'MOUNT_FAILED',
  'IO_ERROR',
  'NOT_SUPPORTED',
  'SHUTTING_DOWN',
  'PARSE_ERROR',
  'INVALID_REQUEST',
  'LINE_TOO_LONG',
  'METHOD_NOT_FOUND',
  'JOB_NOT_FOUND',
  'JOB_STATE',
  'FS_UNKNOWN',
  'FS_CORRUPT',
  'TIMEOUT',
  'CONNECTION_FAILED',
  'FAULTS_DISABLED',
  'FAULT_NOT_FOUND',
  'SOCKET_PATH_IN_USE',
  'CAPACITY_TOO_LARGE',
  'TOO_MANY_CONNECTIONS',
  'TOO_MANY_REQUESTS',
  'PERMISSION_DENIED',
  'PEER_AUTH_FAILED',
  'PEER_PROTOCOL',
  'PEER_UNAVAILABLE',
  'PEER_BUSY',
  'FRAME_TOO_LARGE',
  'FENCED',
  // issue 13: replication
  /** An entry is not the next number the secondary expects (a gap or a reorder); nothing of its batch was applied. */
  'REPLICATION_GAP',
  /** An entry or a sender belongs to an epoch the secondary's chain has moved past (e.g. the old home after a handoff). */
  'EPOCH_STALE',
  /** Two histories of a pair part before both ends: both sides were written; never resolved automatically. */
  'SPLIT_BRAIN',
  /** A replication secondary volume: hosts may read it, only its pair writes it. */
  'VOLUME_READ_ONLY',
  /** No replication pair of that name (or for that volume) here. */
  'PAIR_NOT_FOUND',
  /** Issue 13.7: promote without --force while the primary is reachable and the pair healthy, or the secondary inconsistent (details.reason). */
  'PROMOTE_REFUSED',
  /** Issue 13.7: a failover verb in the wrong state (not promoted here, already demoted, the peer still primary or ahead: details.reason). */
  'FAILOVER_STATE',
  'INTERNAL',
  // issue 15: relays in a cluster
  /** Another live process holds this --relay-id's lease. */
  'RELAY_EXISTS',
  /** The volume is owned by another relay (or by none yet); `details.owner` names it. */
  'NOT_OWNER',
  /** No relay named so is in the cluster. */
  'RELAY_NOT_FOUND',
] as const

export type ErrorCode = (typeof ERROR_CODES)[number]

export interface WireError {
  code: ErrorCode
  message: string
  details?: Record<string, unknown>
}

export class VvfsError extends Error {
  readonly code: ErrorCode
  readonly details?: Record<string, unknown>

  constructor(code: ErrorCode, message: string, opts: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'VvfsError'
    this.code = code
    if (opts.details) this.details = opts.details
  }

  toWire(): WireError {
    return this.details ? { code: this.code, message: this.message, details: this.details } : { code: this.code, message: this.message }
  }
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && (ERROR_CODES as readonly string[]).includes(value)
}

/** Wraps anything thrown into a VvfsError, keeping a VvfsError's own code. */
export function asVvfsError(err: unknown, fallback: ErrorCode = 'INTERNAL'): VvfsError {
  if (err instanceof VvfsError) return err
  const message = err instanceof Error ? err.message : String(err)
  return new VvfsError(fallback, message, { cause: err })
}

export function fromWire(wire: WireError): VvfsError {
  const code = isErrorCode(wire.code) ? wire.code : 'INTERNAL'
  return new VvfsError(code, wire.message, wire.details ? { details: wire.details } : {})
}
