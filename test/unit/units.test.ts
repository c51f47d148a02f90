import { describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { checkExistingName, checkName, formatSize, parseDuration, parseSize } from '../../lib/units.js'

const code = (fn: () => unknown) => {
  try {
    fn()
  } catch (err) {
    return (err as VvfsError).code
  }
  return 'no error'
}

describe('sizes as users write them', () => {
  it('reads binary suffixes as lvcreate does', () => {
    expect(parseSize('512M')).toBe(512 * 2 ** 20)
    expect(parseSize('4G')).toBe(4 * 2 ** 30)
    expect(parseSize('1T')).toBe(2 ** 40)
    expect(parseSize('4GiB')).toBe(4 * 2 ** 30)
    expect(parseSize('1.5G')).toBe(1.5 * 2 ** 30)
    expect(parseSize('4096')).toBe(4096)
    expect(parseSize(4096)).toBe(4096)
  })
  it('refuses sizes that are not positive whole bytes up to 2^53-1', () => {
    for (const bad of [0, -1, '0', '-4G', 2 ** 53, '9P', 1.5, '1.1', 'abc', '', '4X', null, {}, Number.NaN, Infinity]) {
      expect(code(() => parseSize(bad)), String(bad)).toBe('INVALID_SIZE')
    }
  })
  it('prints sizes in binary units', () => {
    expect(formatSize(4 * 2 ** 30)).toBe('4 GiB')
    expect(formatSize(1536 * 2 ** 20)).toBe('1.5 GiB')
    expect(formatSize(12)).toBe('12 B')
  })
})

describe('names', () => {
  it('takes 1-64 of [A-Za-z0-9._-] not starting with a dot or a dash', () => {
    for (const good of ['a', 'demo', 'vol-1.img', 'A_b', '_x', 'x'.repeat(64)]) expect(checkName(good)).toBe(good)
  })
  it('refuses names starting with a dash (-rf, --state), which a CLI or a script would take for options', () => {
    for (const bad of ['-a', '-rf', '--state', '-']) expect(code(() => checkName(bad)), bad).toBe('INVALID_NAME')
  })
  it('still finds an existing object named with a leading dash (states made before that was refused)', () => {
    for (const old of ['-rf', '--state']) expect(checkExistingName(old)).toBe(old)
    for (const bad of ['.x', '../x', '', 'a b']) expect(code(() => checkExistingName(bad)), bad).toBe('INVALID_NAME')
  })
  it('refuses paths, dots, empty and overlong names', () => {
    for (const bad of ['', '.', '..', '../x', 'a/b', '.hidden', 'x'.repeat(65), 'x'.repeat(300), 'a b', 'é', 'a\u0000', 7, null]) {
      expect(code(() => checkName(bad)), JSON.stringify(bad)).toBe('INVALID_NAME')
    }
  })
})

describe('durations', () => {
  it('reads s/m/h/d', () => {
    expect(parseDuration('30s')).toBe(30_000)
    expect(parseDuration('10m')).toBe(600_000)
    expect(parseDuration('2h')).toBe(7_200_000)
    expect(parseDuration('7d')).toBe(7 * 86_400_000)
    expect(code(() => parseDuration('soon'))).toBe('INVALID_ARGUMENT')
  })

  it('refuses what no timer can wait for: past 2^31-1 ms (24.8 days) a timer fires at once', () => {
    expect(parseDuration('24d')).toBe(24 * 86_400_000)
    expect(parseDuration(2 ** 31 - 1)).toBe(2 ** 31 - 1)
    for (const long of ['25d', 2 ** 31, 1e16]) expect(code(() => parseDuration(long)), String(long)).toBe('INVALID_ARGUMENT')
  })
})
