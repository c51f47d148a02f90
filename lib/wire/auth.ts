/**
 * Peer authentication on the wire: a pre-shared key (`--peer-key FILE`),
 * mutual challenge–response, and a MAC on every frame after it.
 *
 * Handshake (each message one frame, bodies fixed-size and tiny):
 *   client → HELLO     {min version, max version, service, nonceC (32)}
 *   server → CHALLENGE {version, nonceS (32), proofS}
 *   client → PROOF     {proofC}                      (client checked proofS)
 *   server → READY     {limits}, the first MAC'd frame (server checked proofC)
 * proof(role) = HMAC-SHA256(key, label ‖ role ‖ version ‖ service ‖ nonceC ‖ nonceS),
 * compared with crypto.timingSafeEqual. The roles differ, so one side's proof
 * can never be replayed as the other's; both nonces are fresh, so no proof
 * can be replayed from another session. The key itself never crosses the wire.
 *
 * Why a MAC on every frame: the proofs authenticate only the handshake's bytes.
 * Without a per-frame MAC, anyone on the path could let two honest peers
 * authenticate and then inject or rewrite frames (a write to a chunk, a
 * journal entry). Each direction has its own key derived from the pre-shared
 * key and both nonces, and the MAC covers a per-direction frame counter that
 * is never sent, so a frame cannot be forged, replayed, reordered or dropped
 * unnoticed.
 *
 * The MAC by protocol version (the handshake picks the highest both sides
 * speak, so a peer of either version still talks to this one):
 *   1  HMAC-SHA256 under the direction's key over (counter ‖ header ‖ body).
 *   2  Poly1305 as ChaCha20-Poly1305 computes it with the direction's key,
 *      the counter as its 96-bit nonce (never repeated under one key), the
 *      header and body as associated data and nothing to encrypt: a
 *      one-time authenticator per frame, as strong as the AEAD's tag. The
 *      frame's 32-byte trailer holds the 16-byte tag and 16 zero bytes.
 *   3  GMAC: AES-256-GCM's tag the same way (the direction's key, the
 *      counter as its 96-bit IV, header and body as associated data,
 *      nothing encrypted) — NIST SP 800-38D's GMAC, a MAC as long as no IV
 *      repeats under a key, which the counter guarantees. Same trailer.
 * Why version 2: the remote store's sequential loads spent most of their
 * CPU on the MAC. HMAC-SHA256 (SHA-NI) took 294 µs per 128 KiB frame and
 * 653 µs per MiB on each side; Poly1305 20 µs and 116 µs (this 2-core VM
 * under load, `node dist/bench/wire-mac.js`), and a 4 KiB frame 8 vs 18 µs.
 * Why version 3: Poly1305 was still the largest item on both main threads
 * of a remote sequential read (perf, bench/remote.js, 2026-12-06: ~30 % of
 * the server's and ~25 % of the relay's); GMAC (AES-NI, VPCLMULQDQ) took
 * 100–107 µs per MiB against 186–188, 12 against 20–22 per 64 KiB and 6–9
 * against 8–10 per 4 KiB frame (`node dist/bench/wire-mac.js`).
 *
 * Why not TLS-PSK (node:tls): it would add confidentiality, but Node supports
 * PSK only with explicitly named cipher suites, a synchronous callback, and a
 * custom checkServerIdentity; the bytes an unauthenticated peer can make us
 * buffer would sit in OpenSSL (records up to 16 KiB) instead of under our
 * 256-byte pre-auth limit; and the version handshake would still be ours.
 * Volume data therefore crosses the wire in clear (integrity-protected, not
 * secret): run it over a private network or a VPN when that matters. The
 * codec runs over any duplex stream, so TLS can be put underneath later.
 *
 * Failure modes: a key file that is missing, group/world-accessible (as ssh
 * refuses a private key) or shorter than MIN_KEY_BYTES is refused with
 * INVALID_ARGUMENT; a wrong proof or MAC is PEER_AUTH_FAILED.
 */
import { createCipheriv, createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'
import { VvfsError } from '../errors.js'
import { bodyPieces, MAC_BYTES, type OutgoingBody } from './frame.js'

/** 32 bytes: the HMAC-SHA256 block strength; `head -c 32 /dev/urandom | base64 > key` makes one (44 characters). */
export const MIN_KEY_BYTES = 32
/** Keys longer than an HMAC-SHA256 block are hashed anyway; more is no stronger, and a huge "key file" is a mistake. */
export const MAX_KEY_BYTES = 4096
export const NONCE_BYTES = 32
export const PROOF_BYTES = 32
export const MAX_SERVICE_BYTES = 32

/** Protocol versions this build speaks (the handshake picks the highest both do). 2: the Poly1305 frame MAC, 3: GMAC (FrameMac). */
export const PROTOCOL_MIN = 1
export const PROTOCOL_MAX = 3
/** The first version whose frames carry a Poly1305 MAC instead of HMAC-SHA256. */
export const POLY1305_VERSION = 2
/** The first version whose frames carry GMAC (AES-256-GCM's tag over associated data only) instead of Poly1305. */
export const GMAC_VERSION = 3
const TAG_BYTES = 16

const LABEL = 'vvfs-wire/1'

/** A pre-shared key. Its bytes stay inside this module (no getter); logs use `id`, a hash that reveals nothing of it. */
export class PeerKey {
  readonly #secret: Buffer
  readonly id: string

  constructor(secret: Buffer) {
    if (secret.length < MIN_KEY_BYTES)
      throw new VvfsError('INVALID_ARGUMENT', `peer key is ${secret.length} bytes; at least ${MIN_KEY_BYTES} are needed (e.g. head -c 32 /dev/urandom | base64)`)
    if (secret.length > MAX_KEY_BYTES) throw new VvfsError('INVALID_ARGUMENT', `peer key is ${secret.length} bytes; at most ${MAX_KEY_BYTES}`)
    this.#secret = Buffer.from(secret)
    this.id = createHmac('sha256', this.#secret).update(`${LABEL} key id`).digest('hex').slice(0, 12)
  }

  hmac(...parts: (Buffer | string)[]): Buffer {
    const h = createHmac('sha256', this.#secret)
    for (const p of parts) h.update(p)
    return h.digest()
  }
}

/**
 * Reads `--peer-key FILE`: its content without trailing whitespace. Refuses a
 * file that others than its owner may read or write.
 */
export async function loadPeerKey(path: string): Promise<PeerKey> {
  let mode: number
  let content: Buffer
  try {
    mode = (await stat(path)).mode
    content = await readFile(path)
  } catch (err) {
    throw new VvfsError('INVALID_ARGUMENT', `cannot read peer key file ${path}: ${(err as Error).message}`, { cause: err })
  }
  if (mode & 0o077)
    throw new VvfsError('INVALID_ARGUMENT', `peer key file ${path} is accessible by others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`)
  let end = content.length
  while (end > 0 && (content[end - 1] === 0x0a || content[end - 1] === 0x0d || content[end - 1] === 0x20 || content[end - 1] === 0x09)) end--
  return new PeerKey(content.subarray(0, end))
}

export function newNonce(): Buffer {
  return randomBytes(NONCE_BYTES)
}

export interface Hello {
  minVersion: number
  maxVersion: number
  service: string
  nonce: Buffer
}

export function encodeHello(h: Hello): Buffer {
  const service = Buffer.from(h.service, 'utf8')
  if (service.length === 0 || service.length > MAX_SERVICE_BYTES) throw new VvfsError('INVALID_ARGUMENT', `service name must be 1–${MAX_SERVICE_BYTES} bytes`)
  return Buffer.concat([Buffer.from([h.minVersion, h.maxVersion, service.length]), service, h.nonce])
}

export function decodeHello(b: Buffer): Hello {
  const n = b.length >= 3 ? b[2] : -1
  if (n < 1 || n > MAX_SERVICE_BYTES || b.length !== 3 + n + NONCE_BYTES) throw new VvfsError('PEER_PROTOCOL', `malformed HELLO (${b.length} bytes)`)
  return { minVersion: b[0], maxVersion: b[1], service: b.subarray(3, 3 + n).toString('utf8'), nonce: Buffer.from(b.subarray(3 + n)) }
}

export interface Challenge {
  version: number
  nonce: Buffer
  proof: Buffer
}

export function encodeChallenge(c: Challenge): Buffer {
  return Buffer.concat([Buffer.from([c.version]), c.nonce, c.proof])
}

export function decodeChallenge(b: Buffer): Challenge {
  if (b.length !== 1 + NONCE_BYTES + PROOF_BYTES) throw new VvfsError('PEER_PROTOCOL', `malformed CHALLENGE (${b.length} bytes)`)
  return { version: b[0], nonce: Buffer.from(b.subarray(1, 1 + NONCE_BYTES)), proof: Buffer.from(b.subarray(1 + NONCE_BYTES)) }
}

export function decodeProof(b: Buffer): Buffer {
  if (b.length !== PROOF_BYTES) throw new VvfsError('PEER_PROTOCOL', `malformed PROOF (${b.length} bytes)`)
  return Buffer.from(b)
}

/** What both proofs and the session keys are bound to. */
export interface SessionContext {
  version: number
  service: string
  clientNonce: Buffer
  serverNonce: Buffer
}

function contextBytes(c: SessionContext): Buffer {
  const service = Buffer.from(c.service, 'utf8')
  return Buffer.concat([Buffer.from([c.version, service.length]), service, c.clientNonce, c.serverNonce])
}

export function proofOf(key: PeerKey, role: 'client' | 'server', c: SessionContext): Buffer {
  return key.hmac(`${LABEL} proof ${role}\0`, contextBytes(c))
}

/** Constant-time check of a peer's proof. */
export function proofMatches(key: PeerKey, role: 'client' | 'server', c: SessionContext, proof: Buffer): boolean {
  const expected = proofOf(key, role, c)
  return proof.length === expected.length && timingSafeEqual(proof, expected)
}

/** A public name of the session for logs on both sides (derived from the nonces only). */
export function sessionIdOf(c: SessionContext): string {
  return createHash('sha256').update(c.clientNonce).update(c.serverNonce).digest('hex').slice(0, 16)
}

/**
 * The MAC of one direction of an authenticated session, under a
 * per-direction key over (frame counter ‖ header ‖ body): HMAC-SHA256 in
 * protocol version 1, Poly1305 from version 2 (see the file comment). The
 * counter counts this direction's MAC'd frames from 0 and is never sent.
 */
export class FrameMac {
  readonly #key: Buffer
  /** The AEAD whose tag is the MAC (versions 2 and 3), or null for HMAC-SHA256 (version 1). */
  readonly #aead: 'chacha20-poly1305' | 'aes-256-gcm' | null
  private counter = 0n

  constructor(key: PeerKey, direction: 'client→server' | 'server→client', c: SessionContext) {
    this.#key = key.hmac(`${LABEL} mac ${direction}\0`, contextBytes(c))
    this.#aead = c.version >= GMAC_VERSION ? 'aes-256-gcm' : c.version >= POLY1305_VERSION ? 'chacha20-poly1305' : null
  }

  /** The MAC of the next frame in this direction (advances the counter); a body in pieces has the MAC of the pieces joined. */
  sign(header: Buffer, body: OutgoingBody): Buffer {
    return this.compute(header, bodyPieces(body))
  }

  /** Checks the next frame in this direction (advances the counter). */
  verify(header: Buffer, body: Buffer, mac: Buffer | null): boolean {
    const expected = this.compute(header, [body])
    return mac !== null && mac.length === MAC_BYTES && timingSafeEqual(mac, expected)
  }

  private compute(header: Buffer, body: readonly Buffer[]): Buffer {
    const n = this.counter++
    if (this.#aead) {
      const nonce = Buffer.alloc(12)
      nonce.writeBigUInt64BE(n, 4)
      const aead =
        this.#aead === 'aes-256-gcm'
          ? createCipheriv('aes-256-gcm', this.#key, nonce, { authTagLength: TAG_BYTES })
          : createCipheriv('chacha20-poly1305', this.#key, nonce, { authTagLength: TAG_BYTES })
      aead.setAAD(header, { plaintextLength: 0 })
      // The tag of AAD given in pieces is that of the pieces joined (checked: test/wire/auth.test.ts).
      for (const piece of body) if (piece.length > 0) aead.setAAD(piece, { plaintextLength: 0 })
      aead.final()
      const trailer = Buffer.alloc(MAC_BYTES)
      aead.getAuthTag().copy(trailer)
      return trailer
    }
    const seq = Buffer.alloc(8)
    seq.writeBigUInt64BE(n)
    const hmac = createHmac('sha256', this.#key).update(seq).update(header)
    for (const piece of body) hmac.update(piece)
    return hmac.digest()
  }
}
