// Commits to a catalog in a loop until killed: each update adds one volume
// named TAG-N and takes the next volume number. After each update resolves
// it prints "N" on stdout, so the parent knows which commits were promised.
// Usage: node catalog-writer.mjs TARGET TAG   (needs the built dist/)
// TARGET is a state directory (the file catalog) or etcd:URL#PREFIX (issue 15).
import { FileCatalog } from '../../dist/lib/manager/catalog.js'
import { EtcdCatalog } from '../../dist/lib/manager/etcd-catalog.js'

const [target, tag] = process.argv.slice(2)
const etcd = /^etcd:(.*)#(.*)$/.exec(target)
const catalog = etcd ? await EtcdCatalog.open({ endpoints: [etcd[1]], prefix: etcd[2] }) : await FileCatalog.open(target)
for (let n = 1; ; ) {
  try {
    await catalog.update((d) => {
      d.volumes.push({ name: `${tag}-${n}`, id: `${tag}-${n}`, no: d.nextVolumeNo++, size: 4096, hosts: [], createdAt: new Date().toISOString(), state: 'ready' })
    })
  } catch (err) {
    // Two writers in a tight loop: one may lose every round of an update (an answer, not a fault); it tries again.
    if (err.code === 'CATALOG_CONFLICT') continue
    throw err
  }
  process.stdout.write(`${n}\n`)
  n++
}
