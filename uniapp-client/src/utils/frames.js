// Frame parsers for the two framings of POST /api/chat and GET /api/messages/{id}/stream.
// Both take decoded text in arbitrary pieces and emit the same events:
//   { type: 'delta', content }                     a piece of the answer
//   { type: 'done', data }                         the done frame (message_id, conversation_id,
//                                                  usage, cost_micros, balance_micros)
//   { type: 'error', code, msg, reason }           an in-band error
//   { type: 'end' }                                the terminal (`0` / `data: [DONE]`)
// Plain ES5-level code, safe for mini-programs.

function safeJson(text) {
  try {
    return { ok: true, value: JSON.parse(text) }
  } catch (e) {
    return { ok: false }
  }
}

function errorEvent(obj) {
  obj = obj || {}
  var ev = { type: 'error', code: typeof obj.code === 'number' ? obj.code : 500, msg: obj.msg || '请求失败' }
  if (obj.reason) ev.reason = obj.reason
  return ev
}

// Mini-program framing: `success: {json}\r\n`, `event: error\ndata: {json}\r\n`, `0\r\n\r\n`.
export function createMpFrameParser(emit) {
  var buf = ''
  var ended = false

  function line(text) {
    if (ended) return
    if (text === '') return
    if (text.indexOf('success:') === 0) {
      var j = safeJson(text.slice(8))
      if (!j.ok || !j.value || typeof j.value !== 'object') return
      var v = j.value
      if (v.done) {
        if (typeof v.content === 'string' && v.content !== '') emit({ type: 'delta', content: v.content })
        emit({ type: 'done', data: v })
      } else if (typeof v.content === 'string' && v.content !== '') {
        emit({ type: 'delta', content: v.content })
      }
      return
    }
    if (text.indexOf('event:') === 0) {
      var nl = text.indexOf('\n')
      var name = (nl < 0 ? text.slice(6) : text.slice(6, nl)).trim()
      var rest = nl < 0 ? '' : text.slice(nl + 1)
      if (rest.indexOf('data:') === 0) rest = rest.slice(5)
      var parsed = safeJson(rest)
      if (name === 'error') emit(errorEvent(parsed.ok ? parsed.value : null))
      return
    }
    if (text === '0') {
      ended = true
      emit({ type: 'end' })
      return
    }
    // A plain JSON error body (an HTTP error answered before the framing applied).
    if (text.charAt(0) === '{') {
      var p = safeJson(text)
      if (p.ok && p.value && typeof p.value.code === 'number') emit(errorEvent(p.value))
    }
  }

  return {
    push: function (text) {
      if (!text) return
      buf += text
      var idx
      while ((idx = buf.indexOf('\r\n')) >= 0) {
        var l = buf.slice(0, idx)
        buf = buf.slice(idx + 2)
        line(l)
      }
    },
    // The connection ended: a last frame without its CRLF still counts.
    flush: function () {
      var rest = buf
      buf = ''
      if (rest.replace(/\s+$/, '') !== '') line(rest.replace(/\s+$/, ''))
    },
    get ended() {
      return ended
    },
  }
}

// SSE framing (H5): OpenAI `data: {chunk}` events, `: comments`, `event: done`, `event: error`,
// `data: [DONE]`. Lines may end in LF, CRLF or CR.
export function createSseParser(emit) {
  var buf = ''
  var eventName = ''
  var data = []
  var ended = false

  function dispatch() {
    var name = eventName || 'message'
    var payload = data.join('\n')
    eventName = ''
    data = []
    if (ended) return
    if (payload === '[DONE]') {
      ended = true
      emit({ type: 'end' })
      return
    }
    var j = safeJson(payload)
    if (!j.ok || !j.value || typeof j.value !== 'object') return
    var v = j.value
    if (name === 'done') {
      emit({ type: 'done', data: v })
      return
    }
    if (name === 'error') {
      emit(errorEvent(v))
      return
    }
    if (v.error) {
      // An upstream error relayed as a data event.
      emit(errorEvent({ code: 11000, msg: (v.error && v.error.message) || '上游服务出错' }))
      return
    }
    if (typeof v.code === 'number' && typeof v.msg === 'string' && !v.choices) {
      emit(errorEvent(v))
      return
    }
    var choices = v.choices
    if (!choices || !choices.length) return
    var delta = choices[0] && choices[0].delta
    var content = delta && delta.content
    if (typeof content === 'string' && content !== '') emit({ type: 'delta', content: content })
  }

  function line(l) {
    if (l === '') {
      if (data.length) dispatch()
      else eventName = ''
      return
    }
    if (l.charAt(0) === ':') return
    var c = l.indexOf(':')
    var field = c < 0 ? l : l.slice(0, c)
    var value = c < 0 ? '' : l.slice(c + 1)
    if (value.charAt(0) === ' ') value = value.slice(1)
    if (field === 'event') eventName = value
    else if (field === 'data') data.push(value)
  }

  return {
    push: function (text) {
      if (!text) return
      buf += text
      for (;;) {
        var m = /\r\n|\r|\n/.exec(buf)
        if (!m) break
        // A CR at the very end may be the first half of CRLF: wait for more.
        if (m[0] === '\r' && m.index === buf.length - 1) break
        var l = buf.slice(0, m.index)
        buf = buf.slice(m.index + m[0].length)
        line(l)
      }
    },
    flush: function () {
      if (buf !== '') {
        var rest = buf.replace(/\r$/, '')
        buf = ''
        line(rest)
      }
      if (data.length) dispatch()
    },
    get ended() {
      return ended
    },
  }
}
