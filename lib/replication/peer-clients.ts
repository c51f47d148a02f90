/**
 * PeerClients: the long-lived wire clients of a daemon's failover reports
 * (failover.ts: each pair's side asks its peer for its history every few
 * seconds), one per peer address and key file, made on first use and all
 * closed by close().
 *
 * Concurrency: reports for several pairs run at once; two asking for the
 * same peer while its key file is read get one client — a second would
 * replace the first in the map and never be closed, and an open client's
 * socket keeps a stopped daemon's process alive. After close() nothing new
 * is made (SHUTTING_DOWN): a report that was reading a key when close() ran
 * would otherwise make a client nobody closes (seen in a CI run on
 * 2026-12-04: a daemon that did not exit within 45 s of SIGTERM, a peer
 * link up after "state closed").
 */
import { VvfsError } from '../errors.js'
import type { Logger } from '../log.js'
import { loadPeerKey } from '../wire/auth.js'
import { WireClient } from '../wire/client.js'
import { parseHostPort } from '../wire/server.js'
import { REPLICATION_SERVICE } from './messages.js'

export class PeerClients {
  private readonly clients = new Map<string, WireClient>()
  private closed = false

  constructor(
    private readonly log: Logger,
    private readonly opts: { deadlineMs: number },
  ) {}

  /** The client for the peer at `address` with the key in `keyFile` (connecting, and reconnecting until close()). */
  async get(address: string, keyFile: string): Promise<WireClient> {
    const id = `${address} ${keyFile}`
    const known = this.clients.get(id)
    if (known) return known
    const { host, port } = parseHostPort(address)
    const key = await loadPeerKey(keyFile)
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', 'the peer clients are closed')
    const made = this.clients.get(id)
    if (made) return made
    const c = new WireClient({ host, port, key, service: REPLICATION_SERVICE, log: this.log, deadlineMs: this.opts.deadlineMs, backoff: { initialMs: 200, maxMs: 1000 } })
    c.start()
    this.clients.set(id, c)
    return c
  }

  /** How many clients are open. */
  get size(): number {
    return this.clients.size
  }

  async close(): Promise<void> {
    this.closed = true
    for (const c of this.clients.values()) await c.close().catch(() => undefined)
    this.clients.clear()
  }
}
