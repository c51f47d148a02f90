/**
 * A replication endpoint on loopback for tests: a WireServer (service
 * 'replication') with the secondary's handlers, and a connected WireClient
 * for the primary's streams. close() stops both.
 */
import { randomBytes } from 'node:crypto'
import { serveReplication, ReplicationStream, type PairLookup } from '../../lib/replication/endpoint.js'
import type { Sender } from '../../lib/replication/epoch.js'
import { REPLICATION_SERVICE } from '../../lib/replication/messages.js'
import { PeerKey } from '../../lib/wire/auth.js'
import { WireClient } from '../../lib/wire/client.js'
import { WireServer } from '../../lib/wire/server.js'
import { capturedLog } from '../wire/peers.js'

export async function endpointFixture(pairs: PairLookup) {
  const key = new PeerKey(randomBytes(32))
  const logs = capturedLog()
  const server = new WireServer({ host: '127.0.0.1', port: 0, key, service: REPLICATION_SERVICE, log: logs.log })
  serveReplication(server, pairs, logs.log)
  const { port } = await server.listen()
  const client = new WireClient({ host: '127.0.0.1', port, key, service: REPLICATION_SERVICE, log: capturedLog().log })
  client.start()
  await client.ready()
  return {
    logs,
    client,
    stream: (pair: string, sender: Sender) => new ReplicationStream(client, pair, sender),
    close: async () => {
      await client.close()
      await server.close()
    },
  }
}
