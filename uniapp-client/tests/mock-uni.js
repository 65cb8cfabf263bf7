// A mocked `uni` for Node: storage in memory, and uni.request recording each call and
// returning a task whose chunks, headers, success and fail the test drives by hand.
export function createMockUni() {
  const store = new Map()
  const requests = []
  const uni = {
    requests,
    store,
    toasts: [],
    navigations: [],
    getStorageSync: (k) => (store.has(k) ? store.get(k) : ''),
    setStorageSync: (k, v) => store.set(k, v),
    removeStorageSync: (k) => store.delete(k),
    showToast: (o) => uni.toasts.push(o),
    showModal: (o) => uni.toasts.push({ modal: true, ...o }),
    navigateTo: (o) => uni.navigations.push(['navigateTo', o.url]),
    reLaunch: (o) => uni.navigations.push(['reLaunch', o.url]),
    request(opts) {
      const chunkCbs = []
      const headerCbs = []
      const req = {
        opts,
        aborted: false,
        task: {
          onChunkReceived: (cb) => chunkCbs.push(cb),
          onHeadersReceived: (cb) => headerCbs.push(cb),
          abort: () => {
            req.aborted = true
            opts.fail && opts.fail({ errMsg: 'request:fail abort' })
          },
        },
        chunk: (data) => chunkCbs.forEach((cb) => cb({ data })),
        headers: (header, statusCode = 200) => headerCbs.forEach((cb) => cb({ header, statusCode })),
        succeed: (res = { statusCode: 200, data: '' }) => opts.success && opts.success(res),
        fail: (errMsg = 'request:fail interrupted') => opts.fail && opts.fail({ errMsg }),
      }
      requests.push(req)
      // JSON API calls (not chunked) are answered by the test's handler, if any.
      if (!opts.enableChunked && uni.json) {
        Promise.resolve().then(() => {
          const r = uni.json(opts)
          if (r && r.fail) opts.fail({ errMsg: 'request:fail' })
          else opts.success(r)
        })
      }
      return req.task
    },
  }
  return uni
}

export const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms))
export async function until(fn, ms = 20000) {
  const t0 = Date.now()
  while (!fn()) {
    if (Date.now() - t0 > ms) throw new Error('timed out waiting')
    await tick(2)
  }
}
