// Commits to a catalog in a loop until killed: each update adds one volume
// named TAG-N and takes the next volume number. After each update resolves
// it prints "N" on stdout, so the parent knows which commits were promised.
// Usage: node catalog-writer.mjs STATE_DIR TAG   (needs the built dist/)
import { FileCatalog } from '../../dist/lib/manager/catalog.js'

const [dir, tag] = process.argv.slice(2)
const catalog = await FileCatalog.open(dir)
for (let n = 1; ; n++) {
  await catalog.update((d) => {
    d.volumes.push({ name: `${tag}-${n}`, id: `${tag}-${n}`, no: d.nextVolumeNo++, size: 4096, hosts: [], createdAt: new Date().toISOString(), state: 'ready' })
  })
  process.stdout.write(`${n}\n`)
}
