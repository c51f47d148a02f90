/**
 * The owner side of bench/ha.ts's failover runs: a process that joins the
 * cluster as relay `owner` (lease TTL given), claims volume `vol`, prints
 * its token and then only keeps its lease alive — until the bench kills it
 * with SIGKILL. Usage: node dist/bench/ha-owner.js ETCD_URL PREFIX TTL_MS
 */
import { Ownership } from '../lib/cluster/ownership.js'
import { RelayLease } from '../lib/cluster/relay-lease.js'
import { createLogger } from '../lib/log.js'
import { etcdClient } from '../lib/manager/etcd-catalog.js'

const [url, prefix, ttl] = process.argv.slice(2)
const client = etcdClient([url!])
const lease = await RelayLease.start({ client, prefix: prefix!, relayId: 'owner', ttlMs: Number(ttl), log: createLogger('silent') })
const owner = await new Ownership(client, prefix!, lease).take('vol', 'vol')
process.stdout.write(`${owner.token}\n`)
