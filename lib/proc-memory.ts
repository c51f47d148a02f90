/**
 * A process's resident memory as Linux reports it in /proc/PID/status: now
 * (VmRSS) and its highest since start (VmHWM). The daemon's `status` reads
 * its own; the benches read their daemons' and storage servers'.
 *
 * Owns nothing; reads a few hundred bytes from the kernel. Failure modes:
 * a process that is gone, or a system without /proc, reads as 0 bytes.
 */
import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'

export interface ProcessMemory {
  /** Resident now (VmRSS), bytes. */
  rss: number
  /** The highest resident since start (VmHWM), bytes. */
  peakRss: number
}

/** The two figures from the text of a /proc/PID/status (0 for a field it lacks). */
export function memoryOfStatus(status: string): ProcessMemory {
  const kib = (field: string) => {
    const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(status)
    return m ? Number(m[1]) * 1024 : 0
  }
  return { rss: kib('VmRSS'), peakRss: kib('VmHWM') }
}

/** This process's, read synchronously (`status` answers from it). */
export function ownMemory(): ProcessMemory {
  try {
    return memoryOfStatus(readFileSync('/proc/self/status', 'latin1'))
  } catch {
    return { rss: 0, peakRss: 0 }
  }
}

/** Process `pid`'s (zeros once it is gone). */
export async function processMemory(pid: number | undefined): Promise<ProcessMemory> {
  if (pid === undefined) return { rss: 0, peakRss: 0 }
  return memoryOfStatus(await readFile(`/proc/${pid}/status`, 'latin1').catch(() => ''))
}
