// The decoder and frame parsers (and both transports) over streams recorded from a real
// gateway (tests/fixtures/recorded/*.json, written by tests/fixtures/record.mjs): the gateway's
// own HTTP chunk boundaries, every single split point, and seeded random multi-splits,
// delivered alternately as ArrayBuffer and Uint8Array.
import { describe, it, expect, beforeEach } from 'vitest'
import fs from 'node:fs'
import { createUtf8Decoder } from '../src/utils/utf8.js'
import { createMpFrameParser, createSseParser } from '../src/utils/frames.js'
import { openMpStream } from '../src/services/transport-mp.js'
import { openH5Stream } from '../src/services/transport-h5.js'
import { rng, randomSplit, asArrayBuffer, asOffsetView } from './fixtures.js'
import { createMockUni, until } from './mock-uni.js'

const DIR = new URL('./fixtures/recorded/', import.meta.url)
const FIXTURES = fs
  .readdirSync(DIR)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((f) => {
    const fx = JSON.parse(fs.readFileSync(new URL(f, DIR), 'utf8'))
    fx.parts = fx.chunks.map((c) => new Uint8Array(Buffer.from(c, 'base64')))
    fx.bytes = concat(fx.parts)
    return fx
  })
const byName = Object.fromEntries(FIXTURES.map((f) => [f.name, f]))

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

// Alternately as WeChat gives chunks (ArrayBuffer) and as devtools / uni-h5 do (a Uint8Array,
// here a view into a larger buffer so byteOffset matters).
const alternate = (parts, first = 0) => parts.map((p, i) => ((i + first) % 2 ? asOffsetView(p) : asArrayBuffer(p)))

// An HTTP error answered with a JSON body reaches the mini-program frame parser as a plain
// JSON "frame" (its flush path); the two framings have their own parsers.
const PARSER = { mp: createMpFrameParser, sse: createSseParser, json: createMpFrameParser }

// Decoder + parser over byte chunks → { text, done, error, end, events }
function run(fx, chunks) {
  const d = createUtf8Decoder()
  const r = { text: '', done: null, error: null, end: 0, events: [] }
  const p = PARSER[fx.framing]((ev) => {
    r.events.push(ev.type)
    if (ev.type === 'delta') r.text += ev.content
    if (ev.type === 'done') r.done = ev.data
    if (ev.type === 'error') r.error = ev
    if (ev.type === 'end') r.end++
  })
  for (const c of chunks) p.push(d.write(c))
  p.push(d.end())
  p.flush()
  return r
}

function check(fx, r, reference) {
  const ex = fx.expect
  expect(r.text).toBe(ex.text)
  expect(r.end).toBe(ex.end ? 1 : 0)
  if (ex.done) {
    expect(r.done).not.toBe(null)
    expect(r.done.message_id).toBe(ex.message_id)
    expect(r.events.slice(-2)).toEqual(['done', 'end'])
  } else {
    expect(r.done).toBe(null)
  }
  if (ex.error) {
    expect(r.error).toMatchObject({ type: 'error', code: ex.error.code, msg: ex.error.msg })
    expect(r.events).toEqual(ex.end ? ['error', 'end'] : ['error'])
  } else {
    expect(r.error).toBe(null)
  }
  // However the bytes are cut, the same events in the same order.
  if (reference) expect(r.events).toEqual(reference.events)
}

// The fixtures themselves: real, and covering what the splits must survive.
describe('recorded gateway streams: the recordings', () => {
  it('are all there', () => {
    expect(Object.keys(byName).sort()).toEqual(
      expect.arrayContaining(['mp-chat', 'sse-chat', 'mp-resume', 'sse-resume', 'mp-resume-live', 'mp-error-bad-request', 'sse-error-bad-token'])
    )
  })

  it('hold an answer with 4-byte emoji, CJK, error/success, a lone 0, quotes, a backslash and line breaks', () => {
    const full = byName['mp-chat'].expect.text
    expect(byName['sse-chat'].expect.text).toBe(full)
    expect([...full].some((c) => c.codePointAt(0) > 0xffff)).toBe(true)
    for (const s of ['😀', '你好世界', 'error', 'success', '\n0\n', '"', '\\', '\r\n']) expect(full).toContain(s)
    for (const name of ['mp-chat', 'sse-chat']) {
      const b = byName[name].bytes
      expect(b.some((x) => x >= 0xf0)).toBe(true) // 4-byte UTF-8 sequences in the raw body
      expect(byName[name].parts.length).toBeGreaterThan(20) // one HTTP chunk per delta
    }
  })

  it('mini-program success frames never contain error/success in their raw bytes (legacy client)', () => {
    for (const fx of FIXTURES.filter((f) => f.framing === 'mp')) {
      expect(fx.status).toBe(200)
      expect(fx.headers['content-type']).toBe('text/plain; charset=utf-8')
      for (const part of fx.parts) {
        const text = Buffer.from(part).toString('utf8')
        if (text.startsWith('event: error')) continue
        expect(text.endsWith('\r\n')).toBe(true) // whole frames per HTTP chunk
        for (const frame of text.split('success: ').slice(1)) {
          expect(frame.includes('error')).toBe(false)
          expect(frame.includes('success')).toBe(false)
        }
      }
      // The terminal is its own chunk, always last.
      expect(Buffer.from(fx.parts[fx.parts.length - 1]).toString('utf8')).toBe('0\r\n\r\n')
    }
    // In the resume the words come whole inside one frame: escaped, not dropped.
    const resumed = Buffer.from(byName['mp-resume'].bytes).toString('utf8')
    expect(resumed).toContain('\\u0065rror')
    expect(resumed).toContain('\\u0073uccess')
  })

  it('resume offsets are code points, not UTF-16 units', () => {
    for (const name of ['mp-resume', 'sse-resume', 'mp-resume-live']) {
      const fx = byName[name]
      const full = byName['mp-chat'].expect.text // same fixed answer for every message
      expect(fx.expect.text).toBe([...full].slice(fx.expect.offset).join(''))
    }
    const { offset } = byName['mp-resume'].expect
    expect([...byName['mp-chat'].expect.text].slice(0, offset).join('').length).not.toBe(offset)
  })
})

for (const fx of FIXTURES) {
  describe(`recorded gateway stream: ${fx.name} (${fx.framing}, HTTP ${fx.status}, ${fx.bytes.length} bytes)`, () => {
    const reference = run(fx, fx.parts)

    it("with the gateway's own chunk boundaries", () => {
      check(fx, reference)
      check(fx, run(fx, alternate(fx.parts)), reference)
      check(fx, run(fx, alternate(fx.parts, 1)), reference)
      check(fx, run(fx, [fx.bytes]), reference) // every chunk merged into one callback
    })

    it('split into two at every byte position', () => {
      const b = fx.bytes
      for (let i = 0; i <= b.length; i++) {
        check(fx, run(fx, alternate([b.slice(0, i), b.slice(i)], i % 2)), reference)
      }
    }, 60000)

    it('over 200 seeded random multi-splits', () => {
      const random = rng(1000 + fx.name.length * 31 + fx.bytes.length)
      for (let k = 0; k < 200; k++) {
        check(fx, run(fx, alternate(randomSplit(fx.bytes, random, 40), k % 2)), reference)
      }
    })

    it('byte by byte', () => {
      const ones = []
      for (let i = 0; i < fx.bytes.length; i++) ones.push(fx.bytes.slice(i, i + 1))
      check(fx, run(fx, alternate(ones)), reference)
    })
  })
}

// The same recordings through the real transports.
describe('recorded gateway streams through the mini-program transport (mocked uni)', () => {
  let uni
  beforeEach(() => {
    uni = createMockUni()
    globalThis.uni = uni
  })

  for (const fx of FIXTURES.filter((f) => f.framing === 'mp')) {
    it(`${fx.name}: gateway chunks and random splits`, async () => {
      const random = rng(7 + fx.bytes.length)
      const cuts = [fx.parts].concat(Array.from({ length: 20 }, () => randomSplit(fx.bytes, random, 30)))
      for (const [k, parts] of cuts.entries()) {
        const r = { text: '', done: null, error: null, closed: null, headers: null }
        openMpStream({
          baseUrl: 'http://gw',
          path: fx.request.path.replace(/[?&]client=mp/, ''),
          method: fx.request.method,
          body: fx.request.body,
          token: 'T',
          settleMs: 0,
          onHeaders: (h) => (r.headers = h),
          onEvent: (ev) => {
            if (ev.type === 'delta') r.text += ev.content
            if (ev.type === 'done') r.done = ev.data
            if (ev.type === 'error') r.error = ev
          },
          onClose: (info) => (r.closed = info),
        })
        const req = uni.requests[uni.requests.length - 1]
        expect(req.opts.url).toBe('http://gw' + fx.request.path)
        req.headers(fx.headers, fx.status)
        alternate(parts, k % 2).forEach((p) => req.chunk(p))
        req.succeed({ statusCode: fx.status, data: '' })
        await until(() => r.closed)
        expect(r.text).toBe(fx.expect.text)
        expect(r.closed).toEqual({ complete: true, reason: 'end' })
        expect(r.headers.messageId).toBe(fx.headers['x-message-id'] || null)
        if (fx.expect.done) expect(r.done.message_id).toBe(fx.expect.message_id)
        else expect(r.done).toBe(null)
        if (fx.expect.error) expect(r.error).toMatchObject({ code: fx.expect.error.code, msg: fx.expect.error.msg })
        else expect(r.error).toBe(null)
      }
    })
  }
})

describe('recorded gateway streams through the H5 transport (fetch + ReadableStream)', () => {
  function respond(fx, parts) {
    let i = 0
    const body = new ReadableStream({
      pull(c) {
        if (i < parts.length) c.enqueue(parts[i++])
        else c.close()
      },
    })
    return new Response(body, { status: fx.status, headers: fx.headers })
  }

  for (const fx of FIXTURES.filter((f) => f.framing !== 'mp')) {
    // Two-piece splits at every byte for the JSON errors, every 13th byte for the SSE streams.
    it(`${fx.name}: gateway chunks and two-piece splits`, async () => {
      const b = fx.bytes
      const cuts = [fx.parts]
      for (let i = 0; i <= b.length; i += fx.framing === 'json' ? 1 : 13) cuts.push([b.slice(0, i), b.slice(i)])
      for (const parts of cuts) {
        const r = { text: '', done: null, error: null, closed: null, headers: null }
        const calls = []
        openH5Stream({
          baseUrl: 'http://gw',
          path: fx.request.path,
          method: fx.request.method,
          body: fx.request.body,
          token: 'T',
          fetch: (url, init) => {
            calls.push({ url, init })
            return Promise.resolve(respond(fx, parts.map((p) => p.slice()).filter((p) => p.length)))
          },
          onHeaders: (h) => (r.headers = h),
          onEvent: (ev) => {
            if (ev.type === 'delta') r.text += ev.content
            if (ev.type === 'done') r.done = ev.data
            if (ev.type === 'error') r.error = ev
          },
          onClose: (info) => (r.closed = info),
        })
        await until(() => r.closed)
        expect(calls[0].url).toBe('http://gw' + fx.request.path)
        expect(r.headers.status).toBe(fx.status)
        expect(r.text).toBe(fx.expect.text)
        if (fx.framing === 'json') {
          expect(r.closed).toEqual({ complete: true, reason: 'http ' + fx.status })
          expect(r.error).toMatchObject({ type: 'error', code: fx.expect.error.code, msg: fx.expect.error.msg })
        } else {
          expect(r.closed).toEqual({ complete: true, reason: 'end' })
          expect(r.done.message_id).toBe(fx.expect.message_id)
          expect(r.error).toBe(null)
        }
      }
    }, 60000)
  }
})
