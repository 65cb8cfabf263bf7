import { describe, it, expect } from 'vitest'
import { createUtf8Decoder, encodeUtf8, toBytes, codePointLength } from '../src/utils/utf8.js'
import { rng, randomSplit, asArrayBuffer, asOffsetView } from './fixtures.js'

const TEXT = 'a你好😀é\u0000𝄞👍🏽 error success 0\r\n汉字ß€'

function decodeAll(parts) {
  const d = createUtf8Decoder()
  let out = ''
  for (const p of parts) out += d.write(p)
  return out + d.end()
}

describe('utf8 decoder', () => {
  const bytes = encodeUtf8(TEXT)

  it('encodes like TextEncoder', () => {
    expect([...encodeUtf8(TEXT)]).toEqual([...new TextEncoder().encode(TEXT)])
  })

  it('decodes at every single split point (ArrayBuffer and Uint8Array)', () => {
    for (let i = 0; i <= bytes.length; i++) {
      const a = bytes.slice(0, i)
      const b = bytes.slice(i)
      expect(decodeAll([asArrayBuffer(a), asArrayBuffer(b)])).toBe(TEXT)
      expect(decodeAll([asOffsetView(a), b])).toBe(TEXT)
    }
  })

  it('decodes at every pair of split points', () => {
    for (let i = 0; i <= bytes.length; i++) {
      for (let j = i; j <= bytes.length; j++) {
        expect(decodeAll([bytes.slice(0, i), asArrayBuffer(bytes.slice(i, j)), bytes.slice(j)])).toBe(TEXT)
      }
    }
  })

  it('decodes one byte at a time and random multi-splits', () => {
    expect(decodeAll([...bytes].map((b) => new Uint8Array([b])))).toBe(TEXT)
    const r = rng(7)
    for (let k = 0; k < 500; k++) {
      const parts = randomSplit(bytes, r, 20).map((p, i) => (i % 2 ? asArrayBuffer(p) : asOffsetView(p)))
      expect(decodeAll(parts)).toBe(TEXT)
    }
  })

  it('accepts a DataView and a string, and ignores null', () => {
    const d = createUtf8Decoder()
    expect(d.write(new DataView(asArrayBuffer(bytes)))).toBe(TEXT)
    expect(d.write('plain')).toBe('plain')
    expect(d.write(null)).toBe('')
  })

  it('normalises without instanceof (an ArrayBuffer-like from another realm)', () => {
    // A foreign-realm ArrayBuffer fails `instanceof ArrayBuffer` but has the brand tag.
    const foreign = asArrayBuffer(bytes)
    Object.setPrototypeOf(foreign, Object.create(null, { [Symbol.toStringTag]: { value: 'ArrayBuffer' } }))
    expect(foreign instanceof ArrayBuffer).toBe(false)
    expect(toBytes(foreign).length).toBe(bytes.length)
    expect(() => toBytes({})).toThrow(/unsupported chunk type/)
  })

  it('replaces invalid bytes like TextDecoder does', () => {
    const cases = [
      [0xff],
      [0xc0, 0x80],
      [0xe0, 0x80, 0x80],
      [0xed, 0xa0, 0x80],
      [0xf4, 0x90, 0x80, 0x80],
      [0xe4, 0xbd, 0x41],
      [0xf0, 0x9f, 0x98],
      [0x61, 0x80, 0x62],
    ]
    const ref = new TextDecoder('utf-8')
    for (const c of cases) {
      const u = new Uint8Array(c)
      expect(decodeAll([u])).toBe(ref.decode(u))
      for (let i = 0; i <= u.length; i++) expect(decodeAll([u.slice(0, i), u.slice(i)])).toBe(ref.decode(u))
    }
  })

  it('counts code points like [...text].length', () => {
    for (const s of [TEXT, '', '😀', '\ud800x', 'x\udc00', 'abc']) expect(codePointLength(s)).toBe([...s].length)
    expect(codePointLength('😀')).not.toBe('😀'.length)
  })
})
