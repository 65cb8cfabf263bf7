// H5 streaming: fetch + ReadableStream over the SSE framing (no X-Client header).
// Errors before the stream are real HTTP statuses with a JSON {code,msg,reason} body.
import { createUtf8Decoder } from '../utils/utf8.js'
import { createSseParser } from '../utils/frames.js'

var STATUS_CODE = { 401: -1, 402: 101, 403: 102, 413: 102, 429: 102, 404: 404, 400: 10001, 502: 11000, 504: 11000 }

// Same options and callbacks as openMpStream.
export function openH5Stream(opts) {
  var closed = false
  var controller = typeof AbortController === 'function' ? new AbortController() : null
  var sawEnd = false
  var fetchImpl = opts.fetch || fetch

  function close(info) {
    if (closed) return
    closed = true
    opts.onClose(info)
  }

  var headers = { Accept: 'text/event-stream' }
  if (opts.body) headers['Content-Type'] = 'application/json'
  if (opts.token) headers.Authorization = 'Bearer ' + opts.token

  var init = { method: opts.method || 'POST', headers: headers, cache: 'no-store' }
  if (opts.body) init.body = JSON.stringify(opts.body)
  if (controller) init.signal = controller.signal

  Promise.resolve()
    .then(function () {
      return fetchImpl(opts.baseUrl + opts.path, init)
    })
    .then(function (res) {
      if (closed) return
      opts.onHeaders &&
        opts.onHeaders({
          messageId: res.headers.get('X-Message-Id'),
          conversationId: res.headers.get('X-Conversation-Id'),
          status: res.status,
        })
      if (!res.ok) {
        return res.text().then(function (t) {
          if (closed) return
          var body = null
          try {
            body = JSON.parse(t)
          } catch (e) {}
          opts.onEvent({
            type: 'error',
            code: body && typeof body.code === 'number' ? body.code : STATUS_CODE[res.status] || 500,
            msg: (body && body.msg) || '请求失败（' + res.status + '）',
            reason: body && body.reason,
          })
          close({ complete: true, reason: 'http ' + res.status })
        })
      }
      var decoder = createUtf8Decoder()
      var parser = createSseParser(function (ev) {
        if (closed) return
        if (ev.type === 'end') sawEnd = true
        opts.onEvent(ev)
      })
      var reader = res.body.getReader()
      function pump() {
        return reader.read().then(function (r) {
          if (closed) return
          if (r.done) {
            parser.push(decoder.end())
            parser.flush()
            close({ complete: sawEnd, reason: sawEnd ? 'end' : 'incomplete' })
            return
          }
          opts.onActivity && opts.onActivity()
          parser.push(decoder.write(r.value))
          return pump()
        })
      }
      return pump()
    })
    .catch(function (err) {
      close({ complete: false, reason: (err && err.message) || String(err) })
    })

  return {
    abort: function () {
      if (closed) return
      closed = true
      try {
        controller && controller.abort()
      } catch (e) {}
    },
  }
}
