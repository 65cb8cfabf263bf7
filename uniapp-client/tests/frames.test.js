import { describe, it, expect } from 'vitest'
import { createUtf8Decoder } from '../src/utils/utf8.js'
import { createMpFrameParser, createSseParser } from '../src/utils/frames.js'
import {
  ANSWER, DONE, DELTAS, mpWrites, mpErrorWrites, sseWrites, bytesOf, rng, randomSplit, asArrayBuffer, asOffsetView,
} from './fixtures.js'

// Decoder + parser over byte chunks → { text, done, error, end, events }
function run(makeParser, chunks) {
  const d = createUtf8Decoder()
  const r = { text: '', done: null, error: null, end: 0, events: [] }
  const p = makeParser((ev) => {
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

const mp = (chunks) => run(createMpFrameParser, chunks)
const sse = (chunks) => run(createSseParser, chunks)

describe('mini-program frames', () => {
  const writes = mpWrites()
  const bytes = bytesOf(writes)

  it('the fixture is what the legacy client needs: no error/success inside success frames', () => {
    for (const w of writes.slice(0, -1)) {
      const body = w.slice('success: '.length)
      expect(body.includes('error')).toBe(false)
      expect(body.includes('success')).toBe(false)
      expect(body.includes('\r\n')).toBe(true) // only the frame end
      expect(body.indexOf('\r\n')).toBe(body.length - 2)
    }
    expect(writes.join('')).toContain('\\u0065rror')
    expect(writes.join('')).toContain('\\u0073uccess')
  })

  it('assembles the answer from one write per callback', () => {
    const r = mp(writes.map((w) => bytesOf([w])))
    expect(r.text).toBe(ANSWER)
    expect(r.done).toEqual({ content: '', done: true, ...DONE })
    expect(r.end).toBe(1)
    expect(r.events.filter((e) => e === 'delta').length).toBe(DELTAS.length)
    expect(r.events.slice(-2)).toEqual(['done', 'end'])
  })

  it('assembles at every split point of the whole stream', () => {
    for (let i = 0; i <= bytes.length; i++) {
      const r = mp([asArrayBuffer(bytes.slice(0, i)), asOffsetView(bytes.slice(i))])
      expect(r.text).toBe(ANSWER)
      expect(r.done.message_id).toBe('msg_1')
      expect(r.end).toBe(1)
      expect(r.error).toBe(null)
    }
  })

  it('assembles over random multi-splits and merged callbacks', () => {
    const random = rng(42)
    for (let k = 0; k < 400; k++) {
      const parts = randomSplit(bytes, random, 30).map((p, i) => (i % 3 ? asArrayBuffer(p) : p))
      const r = mp(parts)
      expect(r.text).toBe(ANSWER)
      expect(r.end).toBe(1)
    }
    expect(mp([bytes]).text).toBe(ANSWER) // everything merged into one callback
  })

  it('reads an in-band error at any split', () => {
    const eb = bytesOf(mpErrorWrites(102, '今日免费次数已用完', 'quota_exhausted'))
    for (let i = 0; i <= eb.length; i++) {
      const r = mp([eb.slice(0, i), eb.slice(i)])
      expect(r.error).toEqual({ type: 'error', code: 102, msg: '今日免费次数已用完', reason: 'quota_exhausted' })
      expect(r.end).toBe(1)
      expect(r.text).toBe('')
    }
  })

  it('reads an error after some content (mid-stream)', () => {
    const w = mpWrites(['部分'], DONE).slice(0, 2).concat(mpErrorWrites(11000, '上游服务失败'))
    const r = mp([bytesOf(w)])
    expect(r.text).toBe('部分')
    expect(r.error.code).toBe(11000)
    expect(r.done).toBe(null)
  })

  it('does not end on a "0" inside content, only on the terminal frame', () => {
    const r = mp([bytesOf(mpWrites(['0', '\r\n0\r\n']).slice(0, 3))])
    expect(r.text).toBe('0\r\n0\r\n')
    expect(r.end).toBe(0)
  })

  it('ignores anything after the terminal', () => {
    const r = mp([bytesOf(mpWrites(['a']).concat(['success: {"content":"late"}\r\n']))])
    expect(r.text).toBe('a')
  })

  it('takes a last frame without CRLF when the connection ends', () => {
    const w = mpWrites(['ab'])
    const cut = w.join('').replace(/\r\n\r\n$/, '')
    expect(mp([bytesOf([cut])]).end).toBe(1)
  })
})

describe('SSE frames', () => {
  for (const [name, eol] of [['LF', '\n'], ['CRLF', '\r\n'], ['CR', '\r']]) {
    it(`assembles at every split point (${name} line ends)`, () => {
      const bytes = bytesOf(sseWrites(DELTAS, DONE, eol))
      for (let i = 0; i <= bytes.length; i++) {
        const r = sse([bytes.slice(0, i), asArrayBuffer(bytes.slice(i))])
        expect(r.text).toBe(ANSWER)
        expect(r.done).toEqual(DONE)
        expect(r.end).toBe(1)
      }
    })
  }

  it('assembles over random multi-splits', () => {
    const bytes = bytesOf(sseWrites())
    const random = rng(9)
    for (let k = 0; k < 400; k++) {
      const r = sse(randomSplit(bytes, random, 30).map((p, i) => (i % 2 ? asOffsetView(p) : asArrayBuffer(p))))
      expect(r.text).toBe(ANSWER)
      expect(r.events.filter((e) => e === 'delta').length).toBe(DELTAS.length)
      expect(r.end).toBe(1)
    }
  })

  it('reads an in-band error then [DONE], at any split', () => {
    const w = sseWrites(['半'], DONE).slice(0, 3).concat(['event: error\ndata: {"code":102,"msg":"内容不合规","reason":"content_blocked"}\n\n', 'data: [DONE]\n\n'])
    const bytes = bytesOf(w)
    for (let i = 0; i <= bytes.length; i++) {
      const r = sse([bytes.slice(0, i), bytes.slice(i)])
      expect(r.text).toBe('半')
      expect(r.error).toEqual({ type: 'error', code: 102, msg: '内容不合规', reason: 'content_blocked' })
      expect(r.done).toBe(null)
      expect(r.end).toBe(1)
    }
  })

  it('ignores comments, usage chunks, role chunks and multi-line data joins', () => {
    const r = sse([bytesOf([': keep-alive\n\n', ': x\n\n', 'data: {"choices":[],"usage":{}}\n\n', 'data: {"choices":[{"delta":{"content":null}}]}\n\n', 'data: {"choices":\ndata: [{"delta":{"content":"x"}}]}\n\n'])])
    expect(r.text).toBe('x')
    expect(r.events).toEqual(['delta'])
  })
})
