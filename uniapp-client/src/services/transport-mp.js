// Mini-program streaming: uni.request with enableChunked (wx.request underneath), the
// mini-program framing (`?client=mp` + `X-Client: mp`), our own UTF-8 decoder and frame parser.
// No TextDecoder, TextEncoder, performance or instanceof: this code ships to WeChat.
import { createUtf8Decoder } from '../utils/utf8.js'
import { createMpFrameParser } from '../utils/frames.js'

function headerValue(headers, name) {
  if (!headers) return null
  var lower = name.toLowerCase()
  for (var k in headers) {
    if (Object.prototype.hasOwnProperty.call(headers, k) && k.toLowerCase() === lower) {
      var v = headers[k]
      return Array.isArray(v) ? v[0] : v
    }
  }
  return null
}

export function withQuery(url, key, value) {
  return url + (url.indexOf('?') >= 0 ? '&' : '?') + key + '=' + encodeURIComponent(value)
}

// opts: { baseUrl, path, method, body, token, onHeaders({messageId, conversationId, status}),
//         onActivity(), onEvent(ev), onClose({complete, reason}) }
// Returns { abort() }. After abort() no callback fires.
export function openMpStream(opts) {
  var decoder = createUtf8Decoder()
  var closed = false
  var chunks = 0
  var status = 0
  var sawEnd = false
  var raw = '' // kept only for a non-200 status: the body is then plain JSON
  var parser = createMpFrameParser(function (ev) {
    if (closed) return
    if (ev.type === 'end') sawEnd = true
    opts.onEvent(ev)
  })

  function feedText(text) {
    if (!text) return
    if (status >= 400) raw += text
    parser.push(text)
  }

  function close(info) {
    if (closed) return
    closed = true
    opts.onClose(info)
  }

  function finish(res) {
    if (closed) return
    if (res && res.statusCode) status = res.statusCode
    // Runtimes without chunk callbacks (or uni-h5 with arraybuffer) hand the whole body here;
    // use it only when no chunk arrived, or it would be counted twice.
    if (chunks === 0 && res && res.data) {
      try {
        feedText(decoder.write(res.data))
      } catch (e) {}
    }
    feedText(decoder.end())
    if (!sawEnd) parser.flush()
    if (!sawEnd && status >= 400 && raw) {
      try {
        var body = JSON.parse(raw)
        if (body && typeof body.code === 'number') {
          opts.onEvent({ type: 'error', code: body.code, msg: body.msg || '请求失败', reason: body.reason })
        }
      } catch (e) {}
      close({ complete: true, reason: 'http ' + status })
      return
    }
    close({ complete: sawEnd, reason: sawEnd ? 'end' : 'incomplete' })
  }

  var header = { 'Content-Type': 'application/json', 'X-Client': 'mp' }
  if (opts.token) header.Authorization = 'Bearer ' + opts.token
  var task = uni.request({
    url: withQuery(opts.baseUrl + opts.path, 'client', 'mp'),
    method: opts.method || 'POST',
    header: header,
    data: opts.body || (opts.method === 'GET' ? undefined : {}),
    enableChunked: true,
    responseType: 'arraybuffer',
    dataType: 'text',
    timeout: opts.timeout || 600000,
    success: function (res) {
      // WeChat may report success a moment before the last chunk callback has run.
      setTimeout(function () {
        finish(res)
      }, opts.settleMs === undefined ? 30 : opts.settleMs)
    },
    fail: function (err) {
      if (closed) return
      close({ complete: false, reason: (err && err.errMsg) || 'request:fail' })
    },
  })

  if (task && typeof task.onHeadersReceived === 'function') {
    task.onHeadersReceived(function (res) {
      if (closed) return
      if (res && res.statusCode) status = res.statusCode
      var h = (res && (res.header || res.headers)) || {}
      opts.onHeaders &&
        opts.onHeaders({
          messageId: headerValue(h, 'X-Message-Id'),
          conversationId: headerValue(h, 'X-Conversation-Id'),
          status: status,
        })
    })
  }
  if (task && typeof task.onChunkReceived === 'function') {
    task.onChunkReceived(function (res) {
      if (closed) return
      chunks++
      opts.onActivity && opts.onActivity()
      feedText(decoder.write(res && res.data))
    })
  }

  return {
    abort: function () {
      if (closed) return
      closed = true
      try {
        task && task.abort && task.abort()
      } catch (e) {}
    },
  }
}
