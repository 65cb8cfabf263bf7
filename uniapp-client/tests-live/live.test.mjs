// Live test of the real client modules against a running gateway:
//   CHATGATE_URL=http://127.0.0.1:8080 npm run test:live
// Skips (with a message) when CHATGATE_URL is unset.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createNodeUni } from './uni-shim.mjs'

const URL_ = (process.env.CHATGATE_URL || '').replace(/\/+$/, '')
const skip = URL_ ? false : 'CHATGATE_URL is not set: live tests skipped (set it to a running gateway, e.g. http://127.0.0.1:8080)'
if (skip) console.log('# ' + skip)

const uni = createNodeUni()
globalThis.uni = uni
const { setBaseUrl, setPlatform } = await import('../src/services/platform.js')
const { setToken } = await import('../src/services/session.js')
const { api } = await import('../src/services/api.js')
const { newAnswer } = await import('../src/services/chat.js')
const { openMpStream } = await import('../src/services/transport-mp.js')
const { openH5Stream } = await import('../src/services/transport-h5.js')

const QUESTION = '你好，请简单介绍一下你自己。'

// Asks one question through the real answer logic. killAfterDeltas: on the first connection,
// after that many deltas, kill it — 'socket' destroys the socket under uni.request (the real
// fail callback), 'abort' aborts the fetch and reports a dead connection.
function ask(open, question, { killAfterDeltas = 0, kill = 'socket' } = {}) {
  return new Promise((resolve, reject) => {
    const urls = []
    let killedAt = null
    let answer
    const wrapped = (o) => {
      urls.push(o.path)
      if (urls.length > 1 || !killAfterDeltas) return open(o)
      let deltas = 0
      let ctrl
      ctrl = open({
        ...o,
        onEvent: (ev) => {
          o.onEvent(ev)
          if (ev.type === 'delta' && ++deltas === killAfterDeltas && killedAt === null) {
            killedAt = answer.text
            if (kill === 'socket') uni.killAll('request:fail interrupted')
            else {
              ctrl.abort()
              setImmediate(() => o.onClose({ complete: false, reason: 'killed by test' }))
            }
          }
        },
      })
      return ctrl
    }
    const timer = setTimeout(() => reject(new Error('answer did not finish in 120 s')), 120000)
    answer = newAnswer(
      {
        onDone: (r) => {
          clearTimeout(timer)
          resolve({ ...r, urls, killedAt })
        },
        onError: (e) => console.log('# error event', JSON.stringify(e)),
      },
      null,
      { open: wrapped }
    )
    answer.start(question, null)
  })
}

test('mini-program request module against the live gateway', { skip, timeout: 300000 }, async (t) => {
  setBaseUrl(URL_)
  setPlatform('mp')
  const username = 'live_' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6)
  const reg = await api.register(username, 'pass-' + username)
  assert.ok(reg.token, 'register returns a token')
  setToken(reg.token)
  const me = await api.me()
  assert.equal(typeof me.balance_micros, 'number')

  await t.test('chat assembles the answer exactly', async () => {
    const r = await ask(openMpStream, QUESTION)
    assert.equal(r.status, 'done')
    assert.ok(r.text.length > 0, 'non-empty answer')
    assert.ok(r.messageId, 'message id known')
    const m = await api.message(r.messageId)
    assert.equal(m.status, 'done')
    assert.equal(r.text, m.content)
    console.log(`# mp answer: ${[...r.text].length} code points, message ${r.messageId}`)
  })

  await t.test('a request killed mid-answer resumes to the same final text', async () => {
    const r = await ask(openMpStream, QUESTION, { killAfterDeltas: 3 })
    assert.equal(r.status, 'done')
    assert.ok(r.killedAt !== null, 'the request was killed mid-answer')
    assert.ok(r.urls.length >= 2, 'it re-attached: ' + r.urls.join(' '))
    assert.equal(r.urls[1], `/api/messages/${r.messageId}/stream?offset=${[...r.killedAt].length}`)
    const m = await api.message(r.messageId)
    assert.equal(r.text, m.content)
    assert.ok(r.text.startsWith(r.killedAt))
  })
})

test('H5 request module (fetch + SSE) against the live gateway', { skip, timeout: 300000 }, async (t) => {
  setBaseUrl(URL_)
  const username = 'live_h5_' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6)
  const reg = await api.register(username, 'pass-' + username)
  setToken(reg.token)

  await t.test('chat over SSE assembles the answer exactly', async () => {
    const r = await ask(openH5Stream, QUESTION)
    assert.equal(r.status, 'done')
    const m = await api.message(r.messageId)
    assert.equal(r.text, m.content)
  })

  await t.test('a fetch aborted mid-answer resumes to the same final text', async () => {
    const r = await ask(openH5Stream, QUESTION, { killAfterDeltas: 3, kill: 'abort' })
    assert.equal(r.status, 'done')
    assert.ok(r.killedAt !== null, 'the request was killed mid-answer')
    assert.equal(r.urls[1], `/api/messages/${r.messageId}/stream?offset=${[...r.killedAt].length}`)
    const m = await api.message(r.messageId)
    assert.equal(r.text, m.content)
  })
})
