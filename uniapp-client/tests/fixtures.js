// Hand-built recorded streams, following DESIGN.md's framings byte for byte.
import { encodeUtf8 } from '../src/utils/utf8.js'

// The answer: 4-byte emoji (incl. a skin-tone modifier), CJK, the words error/success, a lone
// "0" line, CRLF and quotes/backslashes inside content.
export const DELTAS = [
  '你好',
  '！😀 这是',
  ' error 与 success',
  '\r\n0\r\n',
  '👍🏽 代码：`a\\b` "引号"',
  '\n```js\nconsole.log("𝄞")\n```',
  '完',
]
export const ANSWER = DELTAS.join('')
export const DONE = {
  message_id: 'msg_1',
  conversation_id: 'conv_1',
  usage: { prompt_tokens: 12, completion_tokens: 34, total_tokens: 46 },
  cost_micros: 2100,
  balance_micros: 997900,
}

// The gateway's escaping: a success frame's raw bytes never contain "error" or "success".
export function mpJson(obj) {
  return JSON.stringify(obj).replace(/error/g, '\\u0065rror').replace(/success/g, '\\u0073uccess')
}

// Server writes (each one HTTP chunk) of a mini-program answer.
export function mpWrites(deltas = DELTAS, done = DONE) {
  const w = ['success: {"content":""}\r\n'] // heartbeat
  for (const d of deltas) w.push('success: ' + mpJson({ content: d }) + '\r\n')
  w.push('success: ' + mpJson({ content: '', done: true, ...done }) + '\r\n')
  w.push('0\r\n\r\n')
  return w
}
export function mpErrorWrites(code = 101, msg = '余额不足', reason) {
  const e = reason ? { code, msg, reason } : { code, msg }
  return ['event: error\ndata: ' + JSON.stringify(e) + '\r\n', '0\r\n\r\n']
}

function chunk(content) {
  return JSON.stringify({
    id: 'chatcmpl-1',
    object: 'chat.completion.chunk',
    created: 1700000000,
    model: 'demo',
    choices: [{ index: 0, delta: { content }, finish_reason: null }],
  })
}
// Server writes of an H5 (SSE) answer.
export function sseWrites(deltas = DELTAS, done = DONE, eol = '\n') {
  const w = [': keep-alive' + eol + eol]
  w.push('data: ' + JSON.stringify({ id: 'chatcmpl-1', choices: [{ index: 0, delta: { role: 'assistant' } }] }) + eol + eol)
  for (const d of deltas) w.push('data: ' + chunk(d) + eol + eol)
  w.push('data: ' + JSON.stringify({ id: 'chatcmpl-1', choices: [], usage: { prompt_tokens: 12, completion_tokens: 34 } }) + eol + eol)
  w.push('event: done' + eol + 'data: ' + JSON.stringify(done) + eol + eol)
  w.push('data: [DONE]' + eol + eol)
  return w
}

export function bytesOf(writes) {
  return encodeUtf8(writes.join(''))
}

// Deterministic PRNG for the random multi-splits.
export function rng(seed) {
  let s = seed >>> 0
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0
    return s / 4294967296
  }
}
export function randomSplit(bytes, random, maxParts = 12) {
  const n = 1 + Math.floor(random() * maxParts)
  const cuts = new Set()
  for (let i = 0; i < n; i++) cuts.add(Math.floor(random() * (bytes.length + 1)))
  const sorted = [...cuts].sort((a, b) => a - b)
  const out = []
  let prev = 0
  for (const c of sorted) {
    out.push(bytes.slice(prev, c))
    prev = c
  }
  out.push(bytes.slice(prev))
  return out
}
// As WeChat gives them (ArrayBuffer) or as devtools/uni-h5 do (Uint8Array, here a view into
// a larger buffer so byteOffset matters).
export function asArrayBuffer(u8) {
  return u8.buffer.slice(u8.byteOffset, u8.byteOffset + u8.byteLength)
}
export function asOffsetView(u8) {
  const big = new Uint8Array(u8.length + 7)
  big.set(u8, 3)
  return big.subarray(3, 3 + u8.length)
}
