// The chat service end to end in Node: the real answer logic + the real mini-program transport
// over a mocked `uni`, and the real H5 transport over a mocked fetch.
import { describe, it, expect, beforeEach } from 'vitest'
import { newAnswer } from '../src/services/chat.js'
import { openMpStream } from '../src/services/transport-mp.js'
import { openH5Stream } from '../src/services/transport-h5.js'
import { setBaseUrl, setPlatform } from '../src/services/platform.js'
import { setToken, loadPending } from '../src/services/session.js'
import { encodeUtf8 } from '../src/utils/utf8.js'
import { ANSWER, DONE, DELTAS, mpWrites, mpErrorWrites, sseWrites, bytesOf, asArrayBuffer, mpJson } from './fixtures.js'
import { createMockUni, until, tick } from './mock-uni.js'

let uni
beforeEach(() => {
  uni = createMockUni()
  globalThis.uni = uni
  setBaseUrl('http://gw')
  setPlatform('mp')
  setToken('T')
})

function ui() {
  const u = { texts: [], states: [], errors: [], done: null, ids: null }
  u.onText = (t) => u.texts.push(t)
  u.onState = (s) => u.states.push(s)
  u.onError = (e) => u.errors.push(e)
  u.onIds = (ids) => (u.ids = ids)
  u.onDone = (r) => (u.done = r)
  return u
}
const IDLE_MS = 60000
const mpDeps = (extra) => ({ open: (o) => openMpStream({ ...o, settleMs: 0 }), ...extra })
const last = () => uni.requests[uni.requests.length - 1]

// The rest of an answer from code point `offset`, as the stream endpoint would send it.
function resumeWrites(offset) {
  const rest = [...ANSWER].slice(offset).join('')
  return mpWrites(rest ? [rest] : [])
}

describe('mini-program answer: stream, die, resume', () => {
  it('assembles a whole answer and clears the pending record', async () => {
    const u = ui()
    const a = newAnswer(u, null, mpDeps())
    a.start('你好')
    last().headers({ 'X-Message-Id': 'msg_1', 'X-Conversation-Id': 'conv_1' })
    expect(loadPending()).toMatchObject({ message_id: 'msg_1', conversation_id: 'conv_1', text: '' })
    for (const w of mpWrites()) last().chunk(asArrayBuffer(bytesOf([w])))
    last().succeed()
    await until(() => u.done)
    expect(u.done).toMatchObject({ status: 'done', text: ANSWER, messageId: 'msg_1', conversationId: 'conv_1' })
    expect(u.done.data.balance_micros).toBe(DONE.balance_micros)
    expect(uni.requests.length).toBe(1)
    expect(loadPending()).toBe(null)
  })

  it('a request killed mid-answer (fail) resumes at the code-point offset to the same text', async () => {
    const u = ui()
    const a = newAnswer(u, null, mpDeps())
    a.start('讲个笑话', 'conv_1')
    expect(last().opts.data).toEqual({ message: '讲个笑话', conversation_id: 'conv_1' })
    last().headers({ 'X-Message-Id': 'msg_1' })
    // Three deltas (with a 4-byte emoji) arrive, the third one split inside the emoji's bytes.
    const w = mpWrites()
    const firstBytes = bytesOf(w.slice(0, 3))
    const third = bytesOf(w.slice(3, 4))
    last().chunk(asArrayBuffer(firstBytes))
    last().chunk(third.slice(0, 5))
    last().fail('request:fail timeout')
    const shown = DELTAS[0] + DELTAS[1]
    expect(a.text).toBe(shown)
    expect([...shown].length).not.toBe(shown.length) // the emoji makes them differ
    expect(loadPending().text).toBe(shown)
    await until(() => uni.requests.length === 2)
    const r = last()
    expect(r.opts.url).toBe('http://gw/api/messages/msg_1/stream?offset=' + [...shown].length + '&client=mp')
    expect(r.opts.method).toBe('GET')
    expect(r.opts.header['X-Client']).toBe('mp')
    for (const x of resumeWrites([...shown].length)) r.chunk(bytesOf([x]))
    r.succeed()
    await until(() => u.done)
    expect(u.done.status).toBe('done')
    expect(a.text).toBe(ANSWER)
    expect(u.texts[u.texts.length - 1]).toBe(ANSWER)
    expect(u.states).toContain('reconnecting')
  })

  it('resumes repeatedly (60 s cap hit twice) without duplication, using the done frame ids', async () => {
    const u = ui()
    const a = newAnswer(u, null, mpDeps())
    a.start('长回答')
    // No X-Message-Id header this time: the id comes from the done frame... which never comes
    // on a dying request, so it must come from headers — give it on the first request only.
    last().headers({ 'X-Message-Id': 'msg_1' })
    const cps = [...ANSWER]
    let have = 0
    for (const cut of [5, 17]) {
      const piece = cps.slice(have, cut).join('')
      last().chunk(encodeUtf8('success: ' + mpJson({ content: piece }) + '\r\n'))
      have = cut
      last().fail('request:fail timeout')
      await until(() => last().opts.url.includes('offset=' + cut))
    }
    for (const x of resumeWrites(have)) last().chunk(bytesOf([x]))
    last().succeed()
    await until(() => u.done)
    expect(a.text).toBe(ANSWER)
    expect(uni.requests.length).toBe(3)
  })

  it('an answer already done when re-attaching shows the final text', async () => {
    const u = ui()
    const a = newAnswer(u, null, mpDeps())
    a.start('q')
    last().chunk(bytesOf(mpWrites().slice(0, 2)))
    last().headers({ 'X-Message-Id': 'msg_1' })
    last().fail()
    await until(() => uni.requests.length === 2)
    // Everything the client lacks plus the done frame, in one merged callback.
    last().chunk(asArrayBuffer(bytesOf(resumeWrites([...DELTAS[0]].length))))
    last().succeed()
    await until(() => u.done)
    expect(u.done.text).toBe(ANSWER)
  })

  it('background (suspend) drops the request; foreground (wake) resumes from storage offset', async () => {
    const u = ui()
    const a = newAnswer(u, null, mpDeps())
    a.start('q')
    last().headers({ 'X-Message-Id': 'msg_9' })
    last().chunk(bytesOf(mpWrites().slice(0, 3)))
    a.suspend()
    expect(uni.requests[0].aborted).toBe(true)
    expect(a.state).toBe('suspended')
    expect(loadPending().text).toBe(DELTAS[0] + DELTAS[1])
    await tick(20)
    expect(uni.requests.length).toBe(1) // nothing while in the background
    a.wake()
    expect(last().opts.url).toContain('/api/messages/msg_9/stream?offset=' + [...(DELTAS[0] + DELTAS[1])].length)
  })

  it('after a reload, a stored pending answer resumes where the stored text ends', async () => {
    const u = ui()
    const stored = '你好！😀'
    const a = newAnswer(u, { messageId: 'msg_1', conversationId: 'conv_1', text: stored }, mpDeps())
    a.resume()
    expect(last().opts.url).toBe('http://gw/api/messages/msg_1/stream?offset=' + [...stored].length + '&client=mp')
    const rest = [...ANSWER].slice([...stored].length).join('')
    // The answer text must start with the stored text for this fixture.
    expect(ANSWER.startsWith(stored)).toBe(true)
    for (const x of mpWrites([rest])) last().chunk(bytesOf([x]))
    last().succeed()
    await until(() => u.done)
    expect(u.done.text).toBe(ANSWER)
  })

  it('an in-band 101 error fails the answer and reports the code', async () => {
    const u = ui()
    const a = newAnswer(u, null, mpDeps())
    a.start('q')
    for (const w of mpErrorWrites(101, '余额不足')) last().chunk(bytesOf([w]))
    last().succeed()
    await until(() => u.done)
    expect(u.done.status).toBe('failed')
    expect(u.errors[0]).toMatchObject({ code: 101, msg: '余额不足' })
    expect(uni.requests.length).toBe(1) // an error is final: no resume
  })

  it('stop posts /stop and ends as stopped when the stream closes', async () => {
    const u = ui()
    uni.json = (o) => ({ statusCode: 200, data: { ok: true } })
    const a = newAnswer(u, null, mpDeps())
    a.start('q')
    const chat = last()
    chat.headers({ 'X-Message-Id': 'msg_1' })
    chat.chunk(bytesOf(mpWrites().slice(0, 2)))
    a.stop()
    const stopReq = uni.requests.find((r) => r.opts.url.endsWith('/api/messages/msg_1/stop'))
    expect(stopReq.opts.method).toBe('POST')
    chat.chunk(bytesOf(['success: ' + mpJson({ content: '', done: true, ...DONE }) + '\r\n', '0\r\n\r\n']))
    chat.succeed()
    await until(() => u.done)
    expect(u.done.status).toBe('stopped')
    expect(u.done.text).toBe(DELTAS[0])
  })

  it('gives up re-attaching after repeated failures and takes GET /api/messages/{id}', async () => {
    const u = ui()
    uni.json = (o) =>
      o.url.endsWith('/api/messages/msg_1')
        ? { statusCode: 200, data: { id: 'msg_1', conversation_id: 'c', status: 'done', content: ANSWER, cost_micros: 1 } }
        : { fail: true }
    // Retries at once (their back-off is 0.5 s and up); the idle watchdog keeps its own
    // long delay: at 0 ms it would abort each new connection too, and the number of
    // requests the test waits for could be passed between two of its looks.
    const retriesAtOnce = (f, ms) => setTimeout(f, ms >= IDLE_MS ? ms : 0)
    const a = newAnswer(u, null, mpDeps({ maxRetries: 2, idleMs: IDLE_MS, setTimeout: retriesAtOnce }))
    a.start('q')
    last().headers({ 'X-Message-Id': 'msg_1' })
    last().fail()
    await until(() => uni.requests.length === 2)
    last().fail()
    await until(() => uni.requests.length === 3)
    last().fail()
    await until(() => u.done)
    expect(u.done).toMatchObject({ status: 'done', text: ANSWER })
  })
})

// ---- H5: fetch + ReadableStream over SSE ----
function fakeFetch(script) {
  const calls = []
  const f = (url, init) => {
    calls.push({ url, init })
    return script(url, init, calls.length)
  }
  f.calls = calls
  return f
}
function streamResponse(chunks, { headers = {}, failAfter = false, signal } = {}) {
  let i = 0
  const body = new ReadableStream({
    pull(c) {
      if (i < chunks.length) c.enqueue(chunks[i++])
      else if (failAfter) c.error(new TypeError('network error'))
      else c.close()
    },
  })
  const h = new Headers(headers)
  return Promise.resolve({ ok: true, status: 200, headers: h, body, text: () => Promise.resolve('') })
}

describe('H5 answer (fetch + ReadableStream, SSE)', () => {
  beforeEach(() => setPlatform('h5'))

  it('streams over SSE with no X-Client header and reads the id headers', async () => {
    const writes = sseWrites()
    const f = fakeFetch(() => streamResponse(writes.map((w) => encodeUtf8(w)), { headers: { 'X-Message-Id': 'msg_1', 'X-Conversation-Id': 'conv_1' } }))
    const u = ui()
    const a = newAnswer(u, null, { open: (o) => openH5Stream({ ...o, fetch: f }) })
    a.start('你好')
    await until(() => u.done)
    expect(u.done).toMatchObject({ status: 'done', text: ANSWER, messageId: 'msg_1', conversationId: 'conv_1' })
    const { url, init } = f.calls[0]
    expect(url).toBe('http://gw/api/chat')
    expect(init.method).toBe('POST')
    expect(init.headers['X-Client']).toBe(undefined)
    expect(init.headers.Authorization).toBe('Bearer T')
    expect(JSON.parse(init.body)).toEqual({ message: '你好' })
  })

  it('a stream that dies mid-answer resumes via the stream endpoint to the same text', async () => {
    const text = sseWrites().join('')
    // Cut a few bytes into the third delta's event: two deltas (one with a 4-byte emoji) are
    // shown, the third is incomplete and must come again from the resume.
    const at = text.indexOf(JSON.stringify(DELTAS[2]).slice(0, 4))
    const cut = encodeUtf8(text.slice(0, at)).length + 3
    const bytes = bytesOf([text])
    let resumeOffset = null
    const f = fakeFetch((url, init, n) => {
      if (n === 1) return streamResponse([bytes.slice(0, cut + 2)], { headers: { 'X-Message-Id': 'msg_1' }, failAfter: true })
      resumeOffset = Number(/offset=(\d+)/.exec(url)[1])
      const rest = [...ANSWER].slice(resumeOffset).join('')
      return streamResponse([bytesOf(sseWrites([rest]))])
    })
    const u = ui()
    const a = newAnswer(u, null, { open: (o) => openH5Stream({ ...o, fetch: f }) })
    a.start('q')
    await until(() => u.done)
    expect(f.calls[1].url).toBe('http://gw/api/messages/msg_1/stream?offset=' + resumeOffset)
    expect(f.calls[1].init.method).toBe('GET')
    const shown = DELTAS[0] + DELTAS[1]
    expect(resumeOffset).toBe([...shown].length)
    expect(resumeOffset).not.toBe(shown.length)
    expect(u.done.text).toBe(ANSWER)
  })

  it('an HTTP error before the stream gives its {code,msg}', async () => {
    const f = fakeFetch(() =>
      Promise.resolve({ ok: false, status: 402, headers: new Headers(), text: () => Promise.resolve('{"code":101,"msg":"余额不足"}') })
    )
    const u = ui()
    newAnswer(u, null, { open: (o) => openH5Stream({ ...o, fetch: f }) }).start('q')
    await until(() => u.done)
    expect(u.done.status).toBe('failed')
    expect(u.errors[0]).toMatchObject({ code: 101, msg: '余额不足' })
  })
})
