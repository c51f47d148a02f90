/**
 * Crash injection for tests of crash safety: with VVFS_CRASH_AT=name[:n] in
 * its environment the daemon kills itself with SIGKILL the n-th time (default
 * the first) it passes the named point — the same as a kill -9 at exactly
 * that step. Without the variable every call is a no-op.
 */
const counts = new Map<string, number>()
const spec = process.env.VVFS_CRASH_AT

export function crashPoint(name: string): void {
  if (!spec) return
  const [point, nth] = spec.split(':')
  if (point !== name) return
  const n = (counts.get(name) ?? 0) + 1
  counts.set(name, n)
  if (n >= Number(nth ?? 1)) process.kill(process.pid, 'SIGKILL')
}
