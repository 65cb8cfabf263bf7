// One assistant answer on the client, from POST /api/chat (or a stored pending answer) until
// it is done — across lost connections. The answer belongs to the server ("Answers outlive
// connections"), so whenever the connection dies without the answer being finished (fail
// callback, the ~60 s wx.request cap, the app going to the background, a network change, an
// H5 reload) this re-attaches with GET /api/messages/{id}/stream?offset=N, N = code points
// already shown, and carries on without duplicating or losing text.
//
// deps: { open(opts) → {abort}   transport (openMpStream / openH5Stream),
//         baseUrl, getToken(),
//         fetchMessage(id) → Promise<{status, content, …}>,  stopMessage(id) → Promise,
//         savePending(p), clearPending(),
//         setTimeout, clearTimeout, now()            (injectable for tests),
//         idleMs, maxRetries, persistMs }
// ui:   { onText(text), onIds({messageId, conversationId}), onState(state),
//         onDone({status, data, text}), onError(err) }
// states: connecting → streaming ⇄ reconnecting / suspended → done | stopped | failed
import { codePointLength } from '../utils/utf8.js'

var FINAL = { done: 1, stopped: 1, failed: 1 }

export function createAnswer(deps, ui, init) {
  init = init || {}
  var st = {
    text: init.text || '',
    messageId: init.messageId || null,
    conversationId: init.conversationId || null,
    userText: init.userText || '',
    state: 'idle',
    conn: null,
    retries: 0,
    retryTimer: null,
    idleTimer: null,
    lastPersist: 0,
    stopRequested: false,
    stopSent: false,
  }
  // Called as plain functions: browsers throw "Illegal invocation" for setTimeout(this=T).
  var setT = deps.setTimeout || setTimeout
  var clearT = deps.clearTimeout || clearTimeout
  var nowT = deps.now || Date.now
  var T = {
    set: function (f, ms) {
      return setT(f, ms)
    },
    clear: function (id) {
      return clearT(id)
    },
    now: function () {
      return nowT()
    },
  }
  var idleMs = deps.idleMs || 45000
  var maxRetries = deps.maxRetries === undefined ? 8 : deps.maxRetries
  var persistMs = deps.persistMs === undefined ? 400 : deps.persistMs

  function setState(s) {
    if (st.state === s) return
    st.state = s
    ui.onState && ui.onState(s)
  }

  function persist(force) {
    if (!st.messageId || FINAL[st.state]) return
    var now = T.now()
    if (!force && now - st.lastPersist < persistMs) return
    st.lastPersist = now
    deps.savePending({
      message_id: st.messageId,
      conversation_id: st.conversationId,
      text: st.text,
      user_text: st.userText,
      updated_at: now,
    })
  }

  function setIds(messageId, conversationId) {
    var changed = false
    if (messageId && messageId !== st.messageId) {
      st.messageId = String(messageId)
      changed = true
    }
    if (conversationId && conversationId !== st.conversationId) {
      st.conversationId = String(conversationId)
      changed = true
    }
    if (changed) {
      ui.onIds && ui.onIds({ messageId: st.messageId, conversationId: st.conversationId })
      persist(true)
      if (st.stopRequested && !st.stopSent) sendStop()
    }
  }

  function clearTimers() {
    if (st.retryTimer) T.clear(st.retryTimer)
    if (st.idleTimer) T.clear(st.idleTimer)
    st.retryTimer = st.idleTimer = null
  }

  function armIdle() {
    if (st.idleTimer) T.clear(st.idleTimer)
    st.idleTimer = T.set(function () {
      st.idleTimer = null
      // Nothing, not even a heartbeat, for idleMs: the connection is dead without knowing it.
      if (st.conn) {
        st.conn.abort()
        st.conn = null
      }
      scheduleResume()
    }, idleMs)
  }

  function finish(status, data, err) {
    if (FINAL[st.state]) return
    clearTimers()
    if (st.conn) {
      st.conn.abort()
      st.conn = null
    }
    setState(status)
    deps.clearPending()
    if (err) ui.onError && ui.onError(err)
    ui.onDone && ui.onDone({ status: status, data: data || null, text: st.text, messageId: st.messageId, conversationId: st.conversationId })
  }

  function connect(path, method, body) {
    var progressed = false
    var doneData = null
    var errorEv = null
    st.conn = deps.open({
      baseUrl: deps.baseUrl,
      path: path,
      method: method,
      body: body,
      token: deps.getToken(),
      onHeaders: function (h) {
        setIds(h.messageId, h.conversationId)
      },
      onActivity: function () {
        armIdle()
      },
      onEvent: function (ev) {
        if (ev.type === 'delta') {
          if (!progressed) {
            progressed = true
            st.retries = 0
          }
          st.text += ev.content
          setState('streaming')
          ui.onText && ui.onText(st.text)
          persist(false)
        } else if (ev.type === 'done') {
          doneData = ev.data || {}
          setIds(doneData.message_id, doneData.conversation_id)
        } else if (ev.type === 'error') {
          errorEv = ev
        }
      },
      onClose: function (info) {
        st.conn = null
        if (st.idleTimer) {
          T.clear(st.idleTimer)
          st.idleTimer = null
        }
        if (doneData) {
          var status = doneData.status === 'stopped' || st.stopRequested ? 'stopped' : 'done'
          finish(status, doneData)
        } else if (errorEv) {
          if (errorEv.code === 404 && st.messageId && path.indexOf('/stream') > 0) {
            // The stream endpoint no longer knows a live answer: take the stored one.
            fetchFinal()
          } else {
            finish('failed', null, errorEv)
          }
        } else if (info.complete) {
          // A terminal without a done frame (e.g. a stopped answer): ask for the stored answer.
          fetchFinal()
        } else {
          scheduleResume()
        }
      },
    })
    armIdle()
  }

  function scheduleResume() {
    if (FINAL[st.state] || st.state === 'suspended') return
    if (!st.messageId) {
      finish('failed', null, { code: 0, msg: '网络连接中断，请重试' })
      return
    }
    if (st.stopRequested && st.stopSent) {
      fetchFinal()
      return
    }
    st.retries++
    if (st.retries > maxRetries) {
      fetchFinal()
      return
    }
    setState('reconnecting')
    persist(true)
    var delay = st.retries === 1 ? 0 : Math.min(500 * Math.pow(2, st.retries - 2), 8000)
    if (st.retryTimer) T.clear(st.retryTimer)
    st.retryTimer = T.set(function () {
      st.retryTimer = null
      resumeNow()
    }, delay)
  }

  function resumeNow() {
    if (FINAL[st.state] || !st.messageId) return
    if (st.conn) {
      st.conn.abort()
      st.conn = null
    }
    if (st.retryTimer) {
      T.clear(st.retryTimer)
      st.retryTimer = null
    }
    setState('reconnecting')
    var offset = codePointLength(st.text)
    connect('/api/messages/' + encodeURIComponent(st.messageId) + '/stream?offset=' + offset, 'GET', null)
  }

  // The stored answer, whole: used when the stream cannot give it (gave up retrying, stop
  // while disconnected, terminal without done).
  function fetchFinal() {
    if (FINAL[st.state]) return
    deps.fetchMessage(st.messageId).then(
      function (m) {
        if (FINAL[st.state]) return
        if (m && typeof m.content === 'string' && codePointLength(m.content) >= codePointLength(st.text)) {
          st.text = m.content
          ui.onText && ui.onText(st.text)
        }
        if (m && m.status && m.status !== 'streaming') {
          finish(m.status === 'failed' ? 'failed' : m.status === 'stopped' ? 'stopped' : 'done', m)
        } else {
          // Still being written, and the server answers: try the stream again later.
          st.retries = Math.max(0, maxRetries - 2)
          scheduleResume()
        }
      },
      function (err) {
        if (FINAL[st.state]) return
        if (err && err.code === -1) {
          finish('failed', null, err)
          return
        }
        // Offline: keep what we have (and the pending record); wake() or a reload resumes.
        setState('suspended')
        ui.onError && ui.onError({ code: 0, msg: '网络连接中断，恢复后将继续接收' })
      }
    )
  }

  function sendStop() {
    st.stopSent = true
    deps.stopMessage(st.messageId).then(
      function () {
        // The stream should now end with its done frame; if it does not, take the stored answer.
        if (!st.conn && !FINAL[st.state]) fetchFinal()
        else
          st.retryTimer = T.set(function () {
            st.retryTimer = null
            if (!FINAL[st.state]) fetchFinal()
          }, 5000)
      },
      function () {
        if (!FINAL[st.state]) fetchFinal()
      }
    )
  }

  return {
    get state() {
      return st.state
    },
    get text() {
      return st.text
    },
    get messageId() {
      return st.messageId
    },
    get conversationId() {
      return st.conversationId
    },
    // A new question.
    start: function (message, conversationId, model) {
      st.userText = message
      setState('connecting')
      var body = { message: message }
      if (conversationId) body.conversation_id = conversationId
      if (model) body.model = model
      connect('/api/chat', 'POST', body)
    },
    // Continue a known answer (after a reload: init carries messageId and text).
    resume: function () {
      st.retries = 0
      resumeNow()
    },
    // The user pressed stop.
    stop: function () {
      if (FINAL[st.state]) return
      st.stopRequested = true
      if (st.messageId) sendStop()
      else if (!st.conn) finish('stopped')
    },
    // App to background: drop the connection now (it would die anyway) and remember the answer.
    suspend: function () {
      if (FINAL[st.state] || st.state === 'idle') return
      clearTimers()
      if (st.conn) {
        st.conn.abort()
        st.conn = null
      }
      if (!st.messageId) {
        finish('failed', null, { code: 0, msg: '连接已中断，请重新发送' })
        return
      }
      persist(true)
      setState('suspended')
    },
    // Back in the foreground or the network is back: continue at once if not connected.
    wake: function () {
      if (FINAL[st.state] || st.state === 'idle' || st.conn) return
      st.retries = 0
      resumeNow()
    },
    // The page goes away: stop listening but leave the answer pending for the next visit.
    detach: function () {
      clearTimers()
      if (st.conn) {
        st.conn.abort()
        st.conn = null
      }
      persist(true)
    },
  }
}
