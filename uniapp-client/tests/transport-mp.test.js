import { describe, it, expect, beforeEach } from 'vitest'
import { openMpStream } from '../src/services/transport-mp.js'
import { ANSWER, DONE, mpWrites, mpErrorWrites, bytesOf, rng, randomSplit, asArrayBuffer, asOffsetView } from './fixtures.js'
import { createMockUni, until } from './mock-uni.js'

let uni
beforeEach(() => {
  uni = createMockUni()
  globalThis.uni = uni
})

function open(extra = {}) {
  const r = { text: '', done: null, error: null, closed: null, headers: null, activity: 0 }
  r.handle = openMpStream({
    baseUrl: 'http://gw',
    path: '/api/chat',
    method: 'POST',
    body: { message: '你好' },
    token: 'T',
    settleMs: 0,
    onHeaders: (h) => (r.headers = h),
    onActivity: () => r.activity++,
    onEvent: (ev) => {
      if (ev.type === 'delta') r.text += ev.content
      if (ev.type === 'done') r.done = ev.data
      if (ev.type === 'error') r.error = ev
    },
    onClose: (info) => (r.closed = info),
    ...extra,
  })
  r.req = uni.requests[uni.requests.length - 1]
  return r
}

describe('mini-program transport (uni.request enableChunked)', () => {
  it('asks for chunked arraybuffer with the mp framing, callbacks and a long timeout', () => {
    const r = open()
    const o = r.req.opts
    expect(o.url).toBe('http://gw/api/chat?client=mp')
    expect(o.method).toBe('POST')
    expect(o.header).toEqual({ Authorization: 'Bearer T', 'Content-Type': 'application/json', 'X-Client': 'mp' })
    expect(o.data).toEqual({ message: '你好' })
    expect(o.enableChunked).toBe(true)
    expect(o.responseType).toBe('arraybuffer')
    expect(o.timeout).toBeGreaterThanOrEqual(60000)
    expect(typeof o.success).toBe('function')
    expect(typeof o.fail).toBe('function')
  })

  it('assembles chunks given as ArrayBuffer and as Uint8Array, split anywhere', async () => {
    const bytes = bytesOf(mpWrites())
    const random = rng(3)
    for (let k = 0; k < 60; k++) {
      const r = open()
      r.req.headers({ 'x-message-id': 'msg_1', 'X-Conversation-Id': 'conv_1' })
      const parts = randomSplit(bytes, random, 25)
      parts.forEach((p, i) => r.req.chunk(i % 2 ? asArrayBuffer(p) : asOffsetView(p)))
      r.req.succeed({ statusCode: 200, data: '' })
      await until(() => r.closed)
      expect(r.text).toBe(ANSWER)
      expect(r.done).toEqual({ content: '', done: true, ...DONE })
      expect(r.closed).toEqual({ complete: true, reason: 'end' })
      expect(r.headers).toEqual({ messageId: 'msg_1', conversationId: 'conv_1', status: 200 })
      expect(r.activity).toBe(parts.length)
    }
  })

  it('does not count the whole body twice when success also carries it (uni-h5 arraybuffer)', async () => {
    const bytes = bytesOf(mpWrites())
    const r = open()
    r.req.chunk(bytes)
    r.req.succeed({ statusCode: 200, data: asArrayBuffer(bytes) })
    await until(() => r.closed)
    expect(r.text).toBe(ANSWER)
  })

  it('uses the success body when the runtime gave no chunk callbacks', async () => {
    const r = open()
    r.req.succeed({ statusCode: 200, data: asArrayBuffer(bytesOf(mpWrites())) })
    await until(() => r.closed)
    expect(r.text).toBe(ANSWER)
    expect(r.closed.complete).toBe(true)
  })

  it('reports an in-band error', async () => {
    const r = open()
    for (const w of mpErrorWrites(101, '余额不足')) r.req.chunk(asArrayBuffer(bytesOf([w])))
    r.req.succeed()
    await until(() => r.closed)
    expect(r.error).toEqual({ type: 'error', code: 101, msg: '余额不足' })
  })

  it('reports a plain JSON error body sent with an HTTP error status', async () => {
    const r = open()
    r.req.headers({}, 401)
    r.req.chunk(bytesOf(['{"code":-1,"msg":"请先登录"}']))
    r.req.succeed({ statusCode: 401, data: '' })
    await until(() => r.closed)
    expect(r.error).toMatchObject({ code: -1, msg: '请先登录' })
    expect(r.closed.complete).toBe(true)
  })

  it('a connection that dies mid-answer closes incomplete (fail callback or success without terminal)', async () => {
    const w = mpWrites()
    const a = open()
    a.req.chunk(bytesOf(w.slice(0, 3)))
    a.req.fail('request:fail timeout')
    expect(a.closed).toEqual({ complete: false, reason: 'request:fail timeout' })
    const b = open()
    b.req.chunk(bytesOf(w.slice(0, 3)))
    b.req.succeed()
    await until(() => b.closed)
    expect(b.closed.complete).toBe(false)
  })

  it('after abort() nothing more is reported', async () => {
    const r = open()
    r.req.chunk(bytesOf(mpWrites().slice(0, 2)))
    const before = r.text
    r.handle.abort()
    expect(r.req.aborted).toBe(true)
    r.req.chunk(bytesOf(mpWrites().slice(2)))
    expect(r.text).toBe(before)
    expect(r.closed).toBe(null)
  })
})
