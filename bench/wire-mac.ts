/**
 * What the peer wire's MAC on every frame costs: FrameMac.sign (the same
 * code a WireServer or WireClient runs per frame) over 4 KiB, 128 KiB and
 * 1 MiB bodies, for protocol version 1 (HMAC-SHA256, `v1_`), 2
 * (Poly1305, `v2_`) and 3 (GMAC, `v3_`), next to AES-128-GCM of the same bytes (what TLS would
 * spend to encrypt them). One core, a few seconds; prints one JSON line.
 *
 * Run: `node dist/bench/wire-mac.js` (after the build).
 */
import { createCipheriv, randomBytes } from 'node:crypto'
import { FrameMac, newNonce, PeerKey } from '../lib/wire/auth.js'
import { encodeHeader, FrameKind } from '../lib/wire/frame.js'

function microsPer(n: number, fn: () => void): number {
  for (let i = 0; i < Math.min(50, n); i++) fn() // warm up
  const t = process.hrtime.bigint()
  for (let i = 0; i < n; i++) fn()
  return Number(process.hrtime.bigint() - t) / 1000 / n
}

const key = new PeerKey(randomBytes(32))
const result: Record<string, number> = {}
for (const size of [4096, 128 * 1024, 1024 * 1024]) {
  const body = randomBytes(size)
  const header = encodeHeader({ kind: FrameKind.REQUEST, type: 1, id: 1, body }, true)
  const n = Math.max(200, Math.floor((80 * 1024 * 1024) / size))
  for (const version of [1, 2, 3]) {
    const mac = new FrameMac(key, 'client→server', { version, service: 'storage', clientNonce: newNonce(), serverNonce: newNonce() })
    const us = microsPer(Math.min(n, 20000), () => mac.sign(header, body))
    result[`v${version}_mac_us_${size / 1024}k`] = Math.round(us * 10) / 10
    result[`v${version}_mac_mb_s_${size / 1024}k`] = Math.round(size / us)
  }
  const gcm = createCipheriv('aes-128-gcm', randomBytes(16), randomBytes(12))
  result[`aes_gcm_us_${size / 1024}k`] = Math.round(microsPer(Math.min(n, 20000), () => gcm.update(body)) * 10) / 10
}
console.log(JSON.stringify(result))
