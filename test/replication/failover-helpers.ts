/**
 * Helpers of the failover tests (issue 13.7): the CLI against one daemon,
 * its --json answer checked, and image comparisons.
 */
import { readFileSync } from 'node:fs'
import { expect } from 'vitest'
import type { ReplicationInfo } from '../../lib/control/schema.js'
import { cliFor } from '../helpers/cli.js'
import type { DaemonHandle } from '../helpers/daemon.js'

export const vvfs = (d: DaemonHandle) => cliFor(() => d.socket)

/** A successful CLI call's --json answer. */
export function json(r: { code: number | null; out: string; err: string }): ReplicationInfo {
  expect(r.code, r.err).toBe(0)
  return JSON.parse(r.out) as ReplicationInfo
}

/** Whether two images are byte-identical. */
export const same = (a: string, b: string): boolean => Buffer.compare(readFileSync(a), readFileSync(b)) === 0

/** Whether `length` bytes at `offset` of an image are all `byte`. */
export const filledWith = (file: string, offset: number, length: number, byte: number): boolean => readFileSync(file).subarray(offset, offset + length).every((x) => x === byte)
