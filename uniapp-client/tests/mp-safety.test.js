// Code that ships to the mini-program must not lean on browser-only globals, and must call
// host functions the way strict hosts (browsers, WeChat) require.
import { describe, it, expect, beforeEach } from 'vitest'
import fs from 'node:fs'
import path from 'node:path'
import { newAnswer } from '../src/services/chat.js'
import { openMpStream } from '../src/services/transport-mp.js'
import { setBaseUrl, setPlatform } from '../src/services/platform.js'
import { mpWrites, bytesOf } from './fixtures.js'
import { createMockUni, until } from './mock-uni.js'

const MP_FILES = ['utils/utf8.js', 'utils/frames.js', 'utils/markdown.js', 'services/transport-mp.js', 'services/answer.js', 'services/api.js', 'services/session.js', 'services/chat.js', 'services/pay.js']

describe('mini-program safety', () => {
  it('no TextDecoder, TextEncoder, performance or instanceof in mp code', () => {
    for (const f of MP_FILES) {
      const src = fs.readFileSync(path.join(__dirname, '../src', f), 'utf8').replace(/\/\/.*$/gm, '')
      for (const bad of ['TextDecoder', 'TextEncoder', 'performance.', ' instanceof ']) {
        expect(src.includes(bad), `${f} uses ${bad}`).toBe(false)
      }
    }
  })

  beforeEach(() => {
    globalThis.uni = createMockUni()
    setBaseUrl('http://gw')
    setPlatform('mp')
  })

  it('timers are called as plain functions (a browser throws "Illegal invocation" otherwise)', async () => {
    const strictSet = function (f, ms) {
      if (this !== undefined && this !== globalThis) throw new TypeError('Illegal invocation')
      return setTimeout(f, ms)
    }
    const strictClear = function (id) {
      if (this !== undefined && this !== globalThis) throw new TypeError('Illegal invocation')
      return clearTimeout(id)
    }
    let done = null
    const a = newAnswer({ onDone: (r) => (done = r) }, null, {
      open: (o) => openMpStream({ ...o, settleMs: 0 }),
      setTimeout: strictSet,
      clearTimeout: strictClear,
    })
    a.start('q')
    const req = uni.requests[0]
    req.headers({ 'X-Message-Id': 'm' })
    for (const w of mpWrites(['好'])) req.chunk(bytesOf([w]))
    req.succeed()
    await until(() => done)
    expect(done.text).toBe('好')
  })
})
