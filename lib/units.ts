/**
 * Sizes and names as users write them. Sizes are binary (`4G` = 4 GiB, as
 * lvcreate and rbd take them) and must be whole bytes in 1 … 2^53-1; names
 * are 1–64 of [A-Za-z0-9._-], not starting with a dot (so never `.`, `..`
 * or a path) nor a dash (so never an option to the CLI or to a tool a
 * script passes the name to: `-rf`, `--state`).
 */
import { VvfsError } from './errors.js'

const UNITS: Record<string, number> = {
  '': 1, B: 1,
  K: 2 ** 10, KB: 2 ** 10, KIB: 2 ** 10,
  M: 2 ** 20, MB: 2 ** 20, MIB: 2 ** 20,
  G: 2 ** 30, GB: 2 ** 30, GIB: 2 ** 30,
  T: 2 ** 40, TB: 2 ** 40, TIB: 2 ** 40,
  P: 2 ** 50, PB: 2 ** 50, PIB: 2 ** 50,
}

export const MAX_SIZE = Number.MAX_SAFE_INTEGER

/** Parses `512M`, `4G`, `1T`, `1.5G` or a plain byte count (number or string). */
export function parseSize(input: unknown, what = 'size'): number {
  let bytes: number
  if (typeof input === 'number') {
    bytes = input
  } else if (typeof input === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(input)
    const unit = m ? UNITS[m[2]!.toUpperCase()] : undefined
    if (!m || unit === undefined) {
      throw new VvfsError('INVALID_SIZE', `${what} ${JSON.stringify(input)} is not a size (examples: 512M, 4G, 1T, 1048576)`)
    }
    bytes = Number(m[1]) * unit
  } else {
    throw new VvfsError('INVALID_SIZE', `${what} must be a number of bytes or a string like 4G`)
  }
  if (!Number.isFinite(bytes) || !Number.isInteger(bytes)) {
    throw new VvfsError('INVALID_SIZE', `${what} ${String(input)} is not a whole number of bytes`)
  }
  if (bytes <= 0) throw new VvfsError('INVALID_SIZE', `${what} must be greater than 0 (got ${String(input)})`)
  if (bytes > MAX_SIZE) throw new VvfsError('INVALID_SIZE', `${what} ${String(input)} is beyond the largest size vvfs handles (2^53-1 bytes)`)
  return bytes
}

/** `1073741824` → `1.0 GiB`; exact multiples drop the decimal (`4 GiB`). */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let value = bytes
  let i = 0
  while (Math.abs(value) >= 1024 && i < units.length - 1) {
    value /= 1024
    i++
  }
  if (i === 0) return `${bytes} B`
  return Number.isInteger(value) ? `${value} ${units[i]}` : `${value.toFixed(1)} ${units[i]}`
}

/** An offset into a volume: a size, or 0. */
export function parseOffset(input: unknown, what = 'offset'): number {
  if (input === 0 || input === '0') return 0
  return parseSize(input, what)
}

const NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/
/** The rule before names starting with a dash were refused: such a name in an older state still reaches its object. */
const EARLIER_NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$/

/** A name for something new. */
export function checkName(name: unknown, what = 'name'): string {
  if (typeof name !== 'string' || !NAME.test(name)) throw invalidName(name, what)
  return name
}

/**
 * A name that refers to something that exists: also one starting with a
 * dash, as states made before that was refused may hold one (`-rf`) — it can
 * still be shown, unmapped, drained and deleted, never created.
 */
export function checkExistingName(name: unknown, what = 'name'): string {
  if (typeof name !== 'string' || !EARLIER_NAME.test(name)) throw invalidName(name, what)
  return name
}

function invalidName(name: unknown, what: string): VvfsError {
  const shown = typeof name === 'string' ? JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}…` : name) : String(name)
  return new VvfsError('INVALID_NAME', `${what} ${shown} is not valid: use 1–64 of A-Z a-z 0-9 . _ -, not starting with a dot or a dash`)
}

/** Durations like `30s`, `10m`, `2h`, `7d` (for retention windows and timeouts). */
export function parseDuration(input: unknown, what = 'duration'): number {
  let ms: number | undefined
  if (typeof input === 'number' && Number.isFinite(input) && input >= 0) ms = input
  if (typeof input === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(input)
    if (m) {
      const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h' | 'd']
      ms = Math.round(Number(m[1]) * mult)
    }
  }
  if (ms === undefined) throw new VvfsError('INVALID_ARGUMENT', `${what} ${JSON.stringify(input)} is not a duration (examples: 30s, 10m, 2h, 7d)`)
  if (ms > MAX_DURATION_MS) throw new VvfsError('INVALID_ARGUMENT', `${what} ${JSON.stringify(input)} is longer than the longest vvfs waits for (24 days)`)
  return ms
}

/**
 * The longest duration a setting may have: a Node timer's limit (2^31-1 ms,
 * 24.8 days). Past it a timer fires after 1 ms (a `migrate.policy` interval
 * of 25 days ran the policy every millisecond), and a retention window of
 * 10^16 ms is no date (2026-12-04 review).
 */
export const MAX_DURATION_MS = 2 ** 31 - 1
