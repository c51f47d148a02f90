// Another writer commits to an etcd catalog behind a store's back: one
// put of the catalog key with nextSid + 1, as another relay's commit would
// (the key's version, the catalog's revision, goes up by one).
// Usage: node catalog-bump.mjs URL KEY   (exits once the put is acknowledged)
import { Etcd3 } from 'etcd3'

const [url, key] = process.argv.slice(2)
const client = new Etcd3({ hosts: [url] })
const value = JSON.parse(await client.get(key).string())
value.nextSid += 1
value.commit = `bump-${Date.now()}`
await client.put(key).value(JSON.stringify(value))
client.close()
