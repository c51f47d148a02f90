/**
 * Structured logs: one JSON line per event (pino), with an `event` field that
 * names it (`volume.created`, `pool.threshold`, …). The level is set by the
 * daemon's --log-level flag.
 */
import { pino, type Logger as PinoLogger } from 'pino'

export type Logger = PinoLogger

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = (typeof LOG_LEVELS)[number]

export function createLogger(level: LogLevel = 'info', destination: NodeJS.WritableStream = process.stderr): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, destination as never)
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' })
}
