/**
 * The web view's address rules: a bare port binds loopback, IPv6 needs
 * brackets, and only 127.0.0.0/8, ::1 and localhost count as loopback (a
 * daemon asked for anything else needs a token).
 */
import { describe, expect, it } from 'vitest'
import { checkHttpAccess, isLoopback, parseHttpAddress } from '../../lib/http/server.js'

describe('web view address', () => {
  it('parses HOST:PORT, [IPv6]:PORT and a bare PORT (loopback)', () => {
    expect(parseHttpAddress('127.0.0.1:8620')).toEqual({ host: '127.0.0.1', port: 8620 })
    expect(parseHttpAddress('[::1]:80')).toEqual({ host: '::1', port: 80 })
    expect(parseHttpAddress('8620')).toEqual({ host: '127.0.0.1', port: 8620 })
    expect(parseHttpAddress('0.0.0.0:0')).toEqual({ host: '0.0.0.0', port: 0 })
    for (const bad of ['', 'host', '::1:80', '127.0.0.1:70000', '127.0.0.1:-1', 'a b:80']) {
      expect(() => parseHttpAddress(bad), bad).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    }
  })

  it('counts only loopback addresses as loopback, and wants a token for any other', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', 'localhost', '::ffff:127.0.0.1']) expect(isLoopback(host), host).toBe(true)
    for (const host of ['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', 'localhost.example.com', '::ffff:10.0.0.1']) expect(isLoopback(host), host).toBe(false)
    expect(() => checkHttpAccess({ host: '0.0.0.0', port: 1 }, undefined)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    expect(() => checkHttpAccess({ host: '0.0.0.0', port: 1 }, 'a-token-of-sixteen-chars')).not.toThrow()
    expect(() => checkHttpAccess({ host: '127.0.0.1', port: 1 }, undefined)).not.toThrow()
  })
})
