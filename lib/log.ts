/**
 * Structured logs: one event per line (pino), with an `event` field that
 * names it (`volume.created`, `pool.threshold`, …). The level is set by the
 * daemon's --log-level flag.
 *
 * Format (--log-format): `json` — one JSON object per line, for journald,
 * files and programs; `pretty` — one aligned human line per event, for a
 * person at a terminal. By default `pretty` when the destination is a
 * terminal, `json` otherwise (so `vvfs daemon 2>log` and the systemd unit log
 * JSON).
 *
 * Concurrency: pino formats and writes each line synchronously on the
 * calling thread; the pretty form re-reads that line, so both forms carry
 * exactly the same fields. Failure mode: a line that is not JSON (never
 * expected from pino) is passed through unchanged.
 */
import { pino, type Logger as PinoLogger } from 'pino'

export type Logger = PinoLogger

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = (typeof LOG_LEVELS)[number]

export const LOG_FORMATS = ['json', 'pretty'] as const
export type LogFormat = (typeof LOG_FORMATS)[number]

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' }
/** ANSI colours per level, on a terminal only. */
const LEVEL_COLOURS: Record<number, string> = { 10: '\x1b[90m', 20: '\x1b[36m', 30: '\x1b[32m', 40: '\x1b[33m', 50: '\x1b[31m', 60: '\x1b[35m' }
const RESET = '\x1b[0m'
/** Fields every line has, shown in the line's fixed part (or not at all). */
const FIXED = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'event'])

function value(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v)
  return JSON.stringify(v)
}

/** One pino JSON line as a human line: `08:52:07.123 INFO  volume.created  volume created  name=db size=…`. */
export function prettyLine(line: string, colour = false): string {
  let o: Record<string, unknown>
  try {
    o = JSON.parse(line) as Record<string, unknown>
  } catch {
    return line
  }
  const level = Number(o.level)
  const name = (LEVEL_NAMES[level] ?? String(o.level)).padEnd(5)
  const time = typeof o.time === 'string' ? o.time.slice(11, 23) : String(o.time ?? '')
  const rest = Object.entries(o)
    .filter(([k]) => !FIXED.has(k))
    .map(([k, v]) => `${k}=${value(v)}`)
  const parts = [time, colour ? `${LEVEL_COLOURS[level] ?? ''}${name}${RESET}` : name]
  if (o.event !== undefined) parts.push(String(o.event))
  if (o.msg !== undefined) parts.push(String(o.msg))
  if (rest.length) parts.push(rest.join(' '))
  return parts.join('  ') + '\n'
}

export function createLogger(level: LogLevel = 'info', format?: LogFormat, destination: NodeJS.WritableStream = process.stderr): Logger {
  const tty = (destination as NodeJS.WriteStream).isTTY === true
  const options = { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }
  if ((format ?? (tty ? 'pretty' : 'json')) === 'json') return pino(options, destination as never)
  return pino(options, { write: (line: string) => destination.write(prettyLine(line, tty)) } as never)
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' })
}
