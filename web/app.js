// The vvfs web view: plain DOM, no framework. State arrives from the daemon's
// event stream (GET /api/events): a `snapshot` on every (re)connection, then
// `event` (the manager's events) and `usage` (what changed, about once a
// second). A selected volume's detailed extent map is fetched on its own
// (GET /api/volume/NAME/map), again when an event says it changed.
// Nothing here writes: the view is read-only.
'use strict'

const TOKEN = new URLSearchParams(location.search).get('token')
const PALETTE = ['#4c6ef5', '#12b886', '#f76707', '#ae3ec9', '#1098ad', '#f03e3e', '#74b816', '#f59f00', '#7048e8', '#0ca678', '#d6336c', '#495057']
const STRIP_CHARS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ'
const MAP_TILES = 1024
const FEED_MAX = 100

const S = { legend: [], pool: null, systems: [], volumes: new Map(), jobs: new Map(), events: [], selected: null, snapshots: 0 }
const rows = new Map() // volume name → <tr>
let mapTimer = null
let mapDue = false

// ---- helpers

function h(tag, props, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue
    if (k === 'class') el.className = v
    else if (k === 'text') el.textContent = v
    else if (k.startsWith('data-')) el.setAttribute(k, String(v))
    else if (k === 'style') Object.assign(el.style, v)
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else el.setAttribute(k, String(v))
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  return el
}

function url(path) {
  const u = new URL(path, location.href)
  if (TOKEN) u.searchParams.set('token', TOKEN)
  return u.toString()
}

function bytes(n) {
  if (n === undefined || n === null) return ''
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`
}

function duration(s) {
  if (s === null || s === undefined) return '—'
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`
}

function colour(name) {
  const i = S.legend.indexOf(name)
  return i < 0 ? '#adb5bd' : PALETTE[i % PALETTE.length]
}

function bar(percent, warn, cls) {
  const b = h('span', { class: `bar ${cls || ''}` }, h('i', { class: warn !== undefined && percent >= warn ? 'hot' : '', style: { width: `${Math.min(100, percent)}%` } }))
  if (warn !== undefined) b.append(h('b', { style: { left: `${warn}%` }, title: `warning at ${warn}%` }))
  return b
}

// ---- pool and storage systems

function renderPool() {
  const p = S.pool
  if (!p) return
  const fig = (label, value, cls) => h('div', { class: cls }, h('b', { text: value }), h('span', { text: label }))
  document.getElementById('pool-figures').replaceChildren(
    fig('capacity', bytes(p.capacity)),
    fig('allocated', `${bytes(p.allocated)} (${p.usedPercent}%)`, p.usedPercent >= p.warnPercent ? 'over' : ''),
    fig('free', bytes(p.free)),
    fig('largest free run', bytes(p.largestFreeRun)),
    fig('volume sizes / capacity (over-commitment)', `${p.overcommit}×`, p.overcommit > 1 ? 'over' : ''),
    fig('warning threshold', `${p.warnPercent}%`),
    fig('when full', p.fullMode === 'queue' ? `queue writers (${p.queuedWriters} waiting)` : 'writes fail (ENOSPC)'),
    fig('held by jobs', bytes(p.heldByJobs)),
  )
  const body = document.querySelector('#systems tbody')
  body.replaceChildren(...S.systems.map((s) => h('tr', { 'data-storage': s.name },
    h('td', {}, h('span', { class: 'swatch', style: { background: colour(s.name) } }), s.name),
    h('td', { text: s.role }),
    h('td', { class: 'num', text: bytes(s.capacity) }),
    h('td', { class: 'num', text: bytes(s.allocated) }),
    h('td', { class: 'num', text: bytes(s.free) }),
    h('td', {}, bar(s.usedPercent, p.warnPercent), h('span', { text: `${s.usedPercent}%` })),
    h('td', { class: `num ${s.overcommit > 1 ? 'over' : ''}`, text: `${s.overcommit}×` }),
    h('td', { class: 'num', text: s.fragments }),
    h('td', { class: 'num', text: `${s.freeRuns} / ${bytes(s.largestFreeRun)}` }),
    h('td', {}, freeStrip(s)),
  )))
  renderLegend()
}

/** The free-space strip: one pixel column per tile of slots, darker = fuller. */
function freeStrip(s) {
  const c = h('canvas', { class: 'freestrip', width: Math.max(1, s.strip.length), height: 1, title: `${s.tileSlots} slot(s) of 1 MiB per column; ${s.freeRuns} free runs` })
  const ctx = c.getContext('2d')
  const col = colour(s.name)
  for (let i = 0; i < s.strip.length; i++) {
    const level = Number(s.strip[i])
    ctx.fillStyle = level === 0 ? '#ffffff' : col
    ctx.globalAlpha = level === 0 ? 1 : 0.25 + (0.75 * level) / 8
    ctx.fillRect(i, 0, 1, 1)
  }
  return c
}

function renderLegend() {
  const items = S.legend.map((n) => h('span', {}, h('span', { class: 'mark', style: { background: colour(n) } }), n))
  items.push(h('span', {}, h('span', { class: 'mark frag' }), 'fragments'))
  items.push(h('span', {}, h('span', { class: 'mark', style: { background: 'var(--empty)' } }), 'unallocated'))
  items.push(h('span', {}, h('span', { class: 'mark retained' }), 'source retained'))
  items.push(h('span', {}, h('span', { class: 'mark copying', style: { background: '#dee2e6' } }), 'to be copied'))
  document.getElementById('legend').replaceChildren(...items)
}

// ---- jobs

function renderJobs() {
  const body = document.querySelector('#jobs tbody')
  const jobs = [...S.jobs.values()].sort((a, b) => b.id - a.id)
  body.replaceChildren(...jobs.map(jobRow))
  document.getElementById('jobs-empty').hidden = jobs.length > 0
}

function jobRow(j) {
  const p = j.progress
  const active = j.status !== 'concluded'
  return h('tr', { 'data-job': j.id, 'data-status': j.status, 'data-percent': p.percent },
    h('td', { text: `#${j.id}${j.auto ? ' (auto)' : ''}` }),
    h('td', { text: `${j.kind} (${j.mode})` }),
    h('td', { text: j.volumes.join(', ') }),
    h('td', { text: `${j.from || '*'} → ${j.to || '*'}` }),
    h('td', { text: j.status === 'concluded' ? `concluded: ${j.result || ''}${j.error ? ` (${j.error.code})` : ''}` : j.status }),
    h('td', {}, bar(p.percent, undefined, 'job-bar'), h('span', { class: 'job-percent', text: `${p.percent}% of ${bytes(p.total)}` })),
    h('td', { class: 'num', text: active && p.bytesPerSecond ? `${bytes(p.bytesPerSecond)}/s` : '—' }),
    h('td', { class: 'num', text: active ? duration(p.etaSeconds) : '—' }),
  )
}

function updateJob(job) {
  S.jobs.set(job.id, job)
  const old = document.querySelector(`#jobs tr[data-job="${job.id}"]`)
  if (old) old.replaceWith(jobRow(job))
  else renderJobs()
  if (S.selected && job.volumes.includes(S.selected)) refreshMap()
}

// ---- volumes

/** The compact strip as one gradient (one element per volume, however many tiles). */
function stripBackground(strip) {
  if (!strip) return 'var(--empty)'
  const n = strip.length
  const stops = []
  for (let i = 0; i < n; ) {
    let j = i
    while (j < n && strip[j] === strip[i]) j++
    const ch = strip[i]
    const c = ch === '.' ? '#eceff3' : ch === '~' ? '#868e96' : colour(S.legend[STRIP_CHARS.indexOf(ch)])
    stops.push(`${c} ${((100 * i) / n).toFixed(3)}% ${((100 * j) / n).toFixed(3)}%`)
    i = j
  }
  return `linear-gradient(to right, ${stops.join(', ')})`
}

function volumeRow(v) {
  const tr = h('tr', { 'data-volume': v.name, 'data-systems': (v.systems || []).join(' '), class: v.name === S.selected ? 'selected' : '', onclick: () => select(v.name) },
    h('td', { text: v.name }),
    h('td', { class: 'num', text: bytes(v.size) }),
    h('td', { class: 'num', text: bytes(v.allocated) }),
    h('td', { text: v.hosts.join(', ') }),
    h('td', { text: v.state + (v.job ? ` (job #${v.job})` : '') }),
    h('td', {}, h('span', { class: 'strip', style: { background: stripBackground(v.strip) }, title: `${v.tileExtents || 1} extent(s) per column; on ${(v.systems || []).join(', ') || 'nothing yet'}` })),
  )
  const f = document.getElementById('filter').value
  if (f && !v.name.includes(f)) tr.hidden = true
  return tr
}

function renderVolumes() {
  const body = document.querySelector('#volumes tbody')
  rows.clear()
  const frag = document.createDocumentFragment()
  for (const v of [...S.volumes.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const tr = volumeRow(v)
    rows.set(v.name, tr)
    frag.append(tr)
  }
  body.replaceChildren(frag)
  document.getElementById('volume-count').textContent = `(${S.volumes.size})`
}

function updateVolume(v) {
  const known = S.volumes.get(v.name)
  S.volumes.set(v.name, { ...known, ...v })
  const tr = volumeRow(S.volumes.get(v.name))
  const old = rows.get(v.name)
  rows.set(v.name, tr)
  if (old) old.replaceWith(tr)
  else renderVolumes()
  document.getElementById('volume-count').textContent = `(${S.volumes.size})`
  if (v.name === S.selected) refreshMap()
}

function removeVolume(name) {
  S.volumes.delete(name)
  rows.get(name)?.remove()
  rows.delete(name)
  document.getElementById('volume-count').textContent = `(${S.volumes.size})`
  if (S.selected === name) select(null)
}

function select(name) {
  rows.get(S.selected)?.classList.remove('selected')
  S.selected = S.selected === name ? null : name
  rows.get(S.selected)?.classList.add('selected')
  const box = document.getElementById('volume-detail')
  box.hidden = !S.selected
  if (!S.selected) return box.replaceChildren()
  box.replaceChildren(h('h3', { text: S.selected }), h('p', { class: 'note', text: 'loading the extent map…' }))
  loadMap(S.selected)
}

/** At most one map fetch a second for the selected volume, however many events say it changed. */
function refreshMap() {
  if (!S.selected) return
  if (mapTimer) { mapDue = true; return }
  loadMap(S.selected)
  mapTimer = setTimeout(() => {
    mapTimer = null
    if (mapDue) { mapDue = false; refreshMap() }
  }, 1000)
}

async function loadMap(name) {
  try {
    const res = await fetch(url(`api/volume/${encodeURIComponent(name)}/map?tiles=${MAP_TILES}`), { headers: TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {} })
    const m = await res.json()
    if (name !== S.selected) return
    if (!res.ok) throw new Error(m.error ? `${m.error.code}: ${m.error.message}` : res.statusText)
    renderMap(m)
  } catch (err) {
    if (name === S.selected) document.getElementById('volume-detail').replaceChildren(h('h3', { text: name }), h('p', { class: 'note', text: `cannot load the map: ${err.message}` }))
  }
}

function cellBackground(c, tileExtents) {
  const parts = Object.entries(c.by).sort((a, b) => b[1] - a[1])
  if (parts.length === 1 && !c.frag) return colour(parts[0][0])
  const total = c.used
  const stops = []
  let at = 0
  for (const [name, n] of parts) { stops.push(`${colour(name)} ${at}% ${at + (100 * n) / total}%`); at += (100 * n) / total }
  if (!parts.length) return null
  stops.push(`#868e96 ${at}% 100%`)
  return `linear-gradient(to top, ${stops.join(', ')})` + (tileExtents > 1 ? '' : '')
}

function renderMap(m) {
  const byCell = new Map(m.cells.map((c) => [c.i, c]))
  const grid = h('div', { class: m.tiles <= 256 ? 'grid big' : 'grid', 'data-volume': m.volume })
  const frag = document.createDocumentFragment()
  const systems = new Set()
  for (let i = 0; i < m.tiles; i++) {
    const c = byCell.get(i)
    const first = i * m.tileExtents
    const last = Math.min(m.extents, first + m.tileExtents) - 1
    if (!c) {
      frag.append(h('div', { class: 'cell', title: `extents ${first}–${last}: unallocated` }))
      continue
    }
    const names = Object.keys(c.by).sort()
    names.forEach((n) => systems.add(n))
    const cls = ['cell', c.frag && !names.length ? 'frag' : '', c.retained ? 'retained' : '', c.copying ? 'copying' : ''].filter(Boolean).join(' ')
    const bg = cellBackground(c, m.tileExtents)
    const what = [...names.map((n) => `${n} ${c.by[n]}`), c.frag ? `fragments ${c.frag}` : '', c.retained ? `source retained ${c.retained}` : '', c.copying ? `to be copied ${c.copying}` : ''].filter(Boolean).join(', ')
    const fill = c.used / (last - first + 1)
    frag.append(h('div', {
      class: cls, 'data-systems': names.join(' '), 'data-tile': i,
      title: `extents ${first}–${last} (${c.used} allocated): ${what}`,
      style: { background: bg || undefined, opacity: String(0.45 + 0.55 * fill) },
    }))
  }
  grid.append(frag)
  const job = m.job ? ` — in job #${m.job.id} (${m.job.status}, ${m.job.progress.percent}%)` : ''
  document.getElementById('volume-detail').replaceChildren(
    h('h3', { text: `${m.volume}: ${bytes(m.size)}, ${m.cells.reduce((a, c) => a + c.used, 0)} of ${m.extents} extents allocated${job}` }),
    h('p', { class: 'note', 'data-systems': [...systems].sort().join(' '), text: `${m.tileExtents === 1 ? 'one cell per 1 MiB extent' : `one cell per ${m.tileExtents} extents (${bytes(m.tileExtents * m.extentSize)}); paler cells are partly allocated`}; on ${[...systems].sort().join(', ') || 'no storage system yet'}` }),
    grid,
  )
}

// ---- events feed

function describe(e) {
  switch (e.type) {
    case 'volume.created': return `${e.volume.name} (${bytes(e.volume.size)})`
    case 'volume.deleted': return `${e.name}, ${bytes(e.released)} released`
    case 'volume.resized': return `${e.name}: ${bytes(e.from)} → ${bytes(e.to)}`
    case 'volume.reclaimed': return `${e.name}: ${bytes(e.releasedBytes)} released`
    case 'volume.mapped': case 'volume.unmapped': return `${e.name} on ${e.host}`
    case 'storage.added': return `${e.storage.name} (${bytes(e.storage.capacity)})`
    case 'storage.removed': case 'host.removed': return e.name
    case 'host.added': return `${e.host.name} at ${e.host.mount}`
    case 'job.status': return `job #${e.job.id} ${e.job.kind} ${e.job.volumes.join(', ')}: ${e.from || 'new'} → ${e.job.status}${e.job.result ? ` (${e.job.result})` : ''}`
    case 'pool.threshold': return JSON.stringify(Object.fromEntries(Object.entries(e).filter(([k]) => k !== 'type' && k !== 'time')))
    default: return ''
  }
}

function feedItem(e) {
  return h('li', { 'data-type': e.type }, h('time', { text: new Date(e.time).toLocaleTimeString() }), h('code', { text: e.type }), describe(e))
}

function renderFeed() {
  document.getElementById('feed').replaceChildren(...S.events.slice().reverse().map(feedItem))
}

function pushEvent(e) {
  S.events.push(e)
  if (S.events.length > FEED_MAX) S.events.shift()
  const feed = document.getElementById('feed')
  feed.prepend(feedItem(e))
  while (feed.children.length > FEED_MAX) feed.lastChild.remove()
}

// ---- the stream

function onSnapshot(s) {
  S.legend = s.legend
  S.pool = s.pool
  S.systems = s.systems
  S.volumes = new Map(s.volumes.map((v) => [v.name, v]))
  S.jobs = new Map(s.jobs.map((j) => [j.id, j]))
  S.events = s.events
  S.snapshots++
  document.getElementById('version').textContent = `v${s.version}`
  renderPool()
  renderJobs()
  renderVolumes()
  renderFeed()
  if (S.selected && !S.volumes.has(S.selected)) select(null)
  else if (S.selected) refreshMap()
  document.body.dataset.snapshots = String(S.snapshots)
  if (!document.body.dataset.firstRenderMs) document.body.dataset.firstRenderMs = String(Math.round(performance.now()))
}

function onEvent(e) {
  if (e.type === 'job.progress') {
    const j = S.jobs.get(e.job)
    if (!j) return
    const { type: _t, time: _m, job: _j, ...progress } = e
    return updateJob({ ...j, progress })
  }
  pushEvent(e)
  if (e.type === 'job.status') updateJob(e.job)
  else if (e.type === 'volume.created') updateVolume({ strip: '', systems: [], tileExtents: 1, ...e.volume })
  else if (e.type === 'volume.deleted') removeVolume(e.name)
}

function onUsage(u) {
  if (u.legend) S.legend = u.legend
  if (u.pool) {
    S.pool = u.pool
    S.systems = u.systems
    renderPool()
  }
  for (const v of u.volumes) updateVolume(v)
}

function connect() {
  const conn = document.getElementById('conn')
  const es = new EventSource(url('api/events'))
  const handle = (fn) => (msg) => {
    try { fn(JSON.parse(msg.data)) } catch (err) { console.error('vvfs view:', err) }
  }
  es.addEventListener('snapshot', handle(onSnapshot))
  es.addEventListener('event', handle(onEvent))
  es.addEventListener('usage', handle(onUsage))
  es.onopen = () => { conn.dataset.state = 'live'; conn.textContent = 'live' }
  es.onerror = () => {
    // EventSource reconnects by itself (retry: 1000); a new snapshot follows.
    conn.dataset.state = 'reconnecting'
    conn.textContent = 'reconnecting…'
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000)
  }
}

document.getElementById('filter').addEventListener('input', (ev) => {
  const f = ev.target.value
  for (const [name, tr] of rows) tr.hidden = Boolean(f) && !name.includes(f)
})
connect()
