/**
 * The etcd catalog store (EtcdCatalog) against the CatalogStore suite
 * (test/manager/catalog.suite.ts), on a real etcd started for this file:
 * each test gets its own key prefix, two stores on it stand for two relays.
 */
import { execFileSync } from 'node:child_process'
import { join, resolve } from 'node:path'
import { Etcd3 } from 'etcd3'
import { afterAll, beforeAll } from 'vitest'
import type { CatalogData } from '../../lib/manager/catalog.js'
import { EtcdCatalog } from '../../lib/manager/etcd-catalog.js'
import { startEtcd, stopAllEtcd, type EtcdServer } from '../helpers/etcd.js'
import { catalogSuite } from '../manager/catalog.suite.js'

const ROOT = resolve(import.meta.dirname, '../..')
let etcd: EtcdServer
let client: Etcd3
let tests = 0

beforeAll(async () => {
  etcd = await startEtcd()
  client = new Etcd3({ hosts: [etcd.url] })
}, 30_000)
afterAll(async () => {
  client?.close()
  await stopAllEtcd()
})

catalogSuite(
  'etcd',
  async () => {
    const prefix = `t${++tests}-${process.pid}/`
    const key = `${prefix}catalog`
    return {
      open: () => EtcdCatalog.open({ endpoints: [etcd.url], prefix }),
      stored: async () => {
        const kv = (await client.get(key).exec()).kvs[0]!
        const text = kv.value.toString('utf8')
        const { commit: _commit, ...data } = JSON.parse(text) as CatalogData & { commit: string }
        return { rev: Number(kv.version), data, text }
      },
      commitBehind: () => void execFileSync(process.execPath, [join(ROOT, 'test/helpers/catalog-bump.mjs'), etcd.url, key], { stdio: 'inherit' }),
      writerTarget: `etcd:${etcd.url}#${prefix}`,
      cleanup: async () => void (await client.delete().prefix(prefix)),
    }
  },
  { freshRead: true },
)
