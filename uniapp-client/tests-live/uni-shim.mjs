// A `uni` for Node whose request() is built on node:http(s), behaving like wx.request with
// enableChunked: one onChunkReceived callback per socket `data` event, as an ArrayBuffer;
// `success` without a body for chunked requests; `fail` on errors and abort.
import http from 'node:http'
import https from 'node:https'

export function createNodeUni() {
  const store = new Map()
  const live = new Set()
  const uni = {
    store,
    getStorageSync: (k) => (store.has(k) ? store.get(k) : ''),
    setStorageSync: (k, v) => store.set(k, v),
    removeStorageSync: (k) => store.delete(k),
    showToast: () => {},
    showModal: () => {},
    navigateTo: () => {},
    reLaunch: () => {},
    // Destroys every open request's socket, as a dying network would (fail callback).
    killAll(reason = 'request:fail interrupted') {
      for (const r of [...live]) r.kill(reason)
    },
    request(opts) {
      const url = new URL(opts.url)
      const mod = url.protocol === 'https:' ? https : http
      const chunkCbs = []
      const headerCbs = []
      let done = false
      const method = (opts.method || 'GET').toUpperCase()
      let payload = null
      if (opts.data !== undefined && method !== 'GET') payload = typeof opts.data === 'string' ? opts.data : JSON.stringify(opts.data)
      const headers = { ...(opts.header || {}) }
      if (payload != null) headers['Content-Length'] = Buffer.byteLength(payload)
      const finish = (fn, arg) => {
        if (done) return
        done = true
        live.delete(entry)
        fn && fn(arg)
      }
      const req = mod.request(url, { method, headers }, (res) => {
        const header = {}
        for (const [k, v] of Object.entries(res.headers)) header[k] = v
        headerCbs.forEach((cb) => cb({ header, statusCode: res.statusCode }))
        const bufs = []
        res.on('data', (b) => {
          if (done) return
          if (opts.enableChunked) {
            const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.length)
            chunkCbs.forEach((cb) => cb({ data: ab }))
          } else bufs.push(b)
        })
        res.on('end', () => {
          let data = ''
          if (!opts.enableChunked) {
            data = Buffer.concat(bufs).toString('utf8')
            if (opts.dataType === 'json' || opts.dataType === undefined) {
              try {
                data = JSON.parse(data)
              } catch (e) {}
            }
          }
          finish(opts.success, { statusCode: res.statusCode, header, data })
        })
        res.on('error', (e) => finish(opts.fail, { errMsg: 'request:fail ' + e.message }))
        res.on('aborted', () => finish(opts.fail, { errMsg: 'request:fail aborted' }))
      })
      req.on('error', (e) => finish(opts.fail, { errMsg: 'request:fail ' + e.message }))
      if (opts.timeout) req.setTimeout(opts.timeout, () => req.destroy(new Error('timeout')))
      if (payload != null) req.write(payload)
      req.end()
      const entry = {
        kill(reason) {
          finish(opts.fail, { errMsg: reason })
          req.destroy()
        },
      }
      live.add(entry)
      return {
        onChunkReceived: (cb) => chunkCbs.push(cb),
        onHeadersReceived: (cb) => headerCbs.push(cb),
        abort: () => {
          finish(opts.fail, { errMsg: 'request:fail abort' })
          req.destroy()
        },
      }
    },
  }
  return uni
}
