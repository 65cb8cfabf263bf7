// WeChat Pay recharge logic (src/services/pay.js) with a mocked `uni`: uni.request answers the
// gateway's pay API, uni.requestPayment stands in for WeChat's payment sheet, and vitest's fake
// clock drives the 1.5 s polling.
import { describe, it, expect, beforeEach, afterEach, vi } from 'vitest'
import {
  formatFen,
  formatCredit,
  normalizePackages,
  statusText,
  payApi,
  payChannel,
  createPayFlow,
  requestWxPayment,
  isPayCancel,
  isRetryable,
  POLL_INTERVAL_MS,
  POLL_WINDOW_MS,
  AFTER_CANCEL_WINDOW_MS,
} from '../src/services/pay.js'
import { qrcodeDataUrl } from '../src/utils/qrcode.js'
import { setBaseUrl, setPlatform } from '../src/services/platform.js'
import { setToken } from '../src/services/session.js'
import { createMockUni } from './mock-uni.js'

const PKG = { id: 'p10', title: '10 元套餐', price_fen: 990, credit_micros: 10000000 }
const PAY_PARAMS = { timeStamp: '1700000000', nonceStr: 'n0nce', package: 'prepay_id=wx123', signType: 'RSA', paySign: 'c2lnbg==' }

describe('money formatting and helpers', () => {
  it('price_fen → ¥x.xx, credit_micros like the balance', () => {
    expect(formatFen(990)).toBe('¥9.90')
    expect(formatFen(1)).toBe('¥0.01')
    expect(formatFen(0)).toBe('¥0.00')
    expect(formatFen(100000)).toBe('¥1000.00')
    expect(formatFen('2500')).toBe('¥25.00')
    expect(formatFen(-5)).toBe('-¥0.05')
    expect(formatFen(undefined)).toBe('¥0.00')
    expect(formatCredit(10000000)).toBe('¥10.00')
    expect(formatCredit(1234567)).toBe('¥1.23')
  })

  it('normalises the package list and drops entries without an id', () => {
    expect(normalizePackages({ packages: [PKG, { title: 'x' }, null, { id: 7, price_fen: '100', credit_micros: '2000000' }] })).toEqual([
      PKG,
      { id: 7, title: '充值套餐', price_fen: 100, credit_micros: 2000000 },
    ])
    expect(normalizePackages([PKG])).toEqual([PKG])
    expect(normalizePackages({})).toEqual([])
    expect(normalizePackages(null)).toEqual([])
  })

  it('channel per platform, cancel and retry classification, status texts', () => {
    setPlatform('mp')
    expect(payChannel()).toBe('jsapi')
    setPlatform('h5')
    expect(payChannel()).toBe('native')
    expect(isPayCancel({ errMsg: 'requestPayment:fail cancel' })).toBe(true)
    expect(isPayCancel({ errMsg: 'requestPayment:fail (detail message)' })).toBe(false)
    expect(isRetryable({ status: 0 })).toBe(true)
    expect(isRetryable({ status: 502 })).toBe(true)
    expect(isRetryable({ status: 404 })).toBe(false)
    expect(isRetryable({ status: 401 })).toBe(false)
    expect(statusText({ phase: 'paid', credit_micros: 10000000 })).toBe('支付成功，已到账 ¥10.00')
    expect(statusText({ phase: 'waiting', price_fen: 990 })).toContain('¥9.90')
    expect(statusText({ phase: 'closed' })).toContain('已关闭或已过期')
    expect(statusText({ phase: 'cancelled' })).toBe('已取消支付')
    expect(statusText({ phase: 'idle' })).toBe('')
  })

  it('draws code_url as a QR code (an SVG data URL, no network)', async () => {
    const src = await qrcodeDataUrl('weixin://wxpay/bizpayurl?pr=Abc123')
    expect(src.startsWith('data:image/svg+xml;charset=utf-8,')).toBe(true)
    const svg = decodeURIComponent(src.slice(src.indexOf(',') + 1))
    expect(svg).toMatch(/^<svg[^>]*viewBox="0 0 \d+ \d+"/)
    expect(svg).toContain('<path')
  })
})

describe('pay flow', () => {
  let uni
  let orders // order id → list of answers for successive GET /api/pay/orders/{id}
  let created
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] })
    uni = createMockUni()
    globalThis.uni = uni
    setBaseUrl('http://gw')
    setToken('T')
    orders = {}
    created = []
    uni.json = (o) => {
      const path = o.url.replace('http://gw', '')
      if (path === '/api/pay/packages') return { statusCode: 200, data: { packages: [PKG] } }
      if (path === '/api/pay/orders' && o.method === 'POST') {
        created.push(o.data)
        if (uni.createAnswer) return uni.createAnswer(o)
        return o.data.channel === 'native'
          ? { statusCode: 200, data: { order_id: 'o1', code_url: 'weixin://wxpay/bizpayurl?pr=o1' } }
          : { statusCode: 200, data: { order_id: 'o1', pay_params: PAY_PARAMS } }
      }
      const m = path.match(/^\/api\/pay\/orders\/([^/]+)$/)
      if (m && o.method === 'GET') {
        const q = orders[m[1]] || []
        const next = q.length > 1 ? q.shift() : q[0] || { status: 'pending' }
        if (next === 'netfail') return { fail: true }
        if (next.statusCode) return next
        return { statusCode: 200, data: { credit_micros: PKG.credit_micros, ...next } }
      }
      return { statusCode: 404, data: { code: 404, msg: 'not found' } }
    }
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  const polls = (id = 'o1') => uni.requests.filter((r) => r.opts.method === 'GET' && r.opts.url === 'http://gw/api/pay/orders/' + id).length

  function mpFlow(extra = {}) {
    const events = { paid: 0, errors: [], states: [] }
    uni.requestPayment = vi.fn((o) => {
      events.payOpts = o
      Promise.resolve().then(() => (uni.payOutcome ? o.fail(uni.payOutcome) : o.success({ errMsg: 'requestPayment:ok' })))
    })
    const flow = createPayFlow({
      api: payApi,
      channel: 'jsapi',
      requestPayment: requestWxPayment,
      onChange: (s) => events.states.push(s.phase),
      onPaid: () => events.paid++,
      onError: (e) => events.errors.push(e),
      ...extra,
    })
    return { flow, events }
  }

  it('mini-program: jsapi order → requestPayment → paid after 3 polls → onPaid once, polling stops', async () => {
    orders.o1 = [{ status: 'pending' }, { status: 'pending' }, { status: 'paid' }]
    const { flow, events } = mpFlow()
    await flow.buy(PKG)
    expect(created).toEqual([{ package_id: 'p10', channel: 'jsapi' }])
    const post = uni.requests.find((r) => r.opts.method === 'POST')
    expect(post.opts.url).toBe('http://gw/api/pay/orders')
    expect(post.opts.header.Authorization).toBe('Bearer T')
    expect(uni.requestPayment).toHaveBeenCalledTimes(1)
    expect(events.payOpts).toMatchObject({ provider: 'wxpay', ...PAY_PARAMS })
    expect(flow.state().phase).toBe('checking')
    expect(polls()).toBe(0)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)
    expect(polls()).toBe(1)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 2)
    expect(polls()).toBe(3)
    expect(flow.state().phase).toBe('paid')
    expect(flow.state().text).toBe('支付成功，已到账 ¥10.00')
    expect(events.paid).toBe(1)
    await vi.advanceTimersByTimeAsync(POLL_WINDOW_MS)
    expect(polls()).toBe(3)
    expect(events.paid).toBe(1)
    expect(flow.polling()).toBe(false)
    expect(events.states).toEqual(['creating', 'paying', 'checking', 'paid'])
  })

  it('user cancels the payment sheet: "已取消支付", a short poll, no error', async () => {
    uni.payOutcome = { errMsg: 'requestPayment:fail cancel' }
    const { flow, events } = mpFlow()
    await flow.buy(PKG)
    expect(flow.state().phase).toBe('cancelled')
    expect(flow.state().text).toBe('已取消支付')
    expect(flow.state().settled).toBe(false)
    await vi.advanceTimersByTimeAsync(AFTER_CANCEL_WINDOW_MS + POLL_INTERVAL_MS)
    const n = polls()
    expect(n).toBeGreaterThanOrEqual(5)
    expect(n).toBeLessThanOrEqual(Math.ceil(AFTER_CANCEL_WINDOW_MS / POLL_INTERVAL_MS) + 1)
    expect(flow.state().phase).toBe('cancelled')
    expect(flow.state().settled).toBe(true)
    await vi.advanceTimersByTimeAsync(60000)
    expect(polls()).toBe(n)
    expect(events.errors).toEqual([])
    expect(events.paid).toBe(0)
  })

  it('cancelled, but the money went through: the short poll still finds it paid', async () => {
    uni.payOutcome = { errMsg: 'requestPayment:fail cancel' }
    orders.o1 = [{ status: 'pending' }, { status: 'paid' }]
    const { flow, events } = mpFlow()
    await flow.buy(PKG)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 3)
    expect(flow.state().phase).toBe('paid')
    expect(events.paid).toBe(1)
  })

  it('another requestPayment failure says so and still polls briefly', async () => {
    uni.payOutcome = { errMsg: 'requestPayment:fail 签名错误' }
    const { flow } = mpFlow()
    await flow.buy(PKG)
    expect(flow.state().phase).toBe('failed')
    expect(flow.state().text).toBe('支付未完成：requestPayment:fail 签名错误')
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)
    expect(polls()).toBe(1)
  })

  it('a closed (expired) order says so and stops', async () => {
    orders.o1 = [{ status: 'pending' }, { status: 'closed' }]
    const { flow, events } = mpFlow()
    await flow.buy(PKG)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 5)
    expect(polls()).toBe(2)
    expect(flow.state().phase).toBe('closed')
    expect(flow.state().text).toBe('订单已关闭或已过期，请重新下单')
    expect(events.paid).toBe(0)
  })

  it('network errors and 5xx during polling are retried; paid once in the end', async () => {
    orders.o1 = ['netfail', 'netfail', { statusCode: 502, data: { code: 11000, msg: 'bad gateway' } }, { status: 'pending' }, { status: 'paid' }]
    const { flow, events } = mpFlow()
    await flow.buy(PKG)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 8)
    expect(polls()).toBe(5)
    expect(flow.state().phase).toBe('paid')
    expect(events.paid).toBe(1)
    expect(events.errors).toEqual([])
  })

  it('a 4xx while polling ends the poll with the server message', async () => {
    orders.o1 = [{ statusCode: 404, data: { code: 404, msg: '订单不存在' } }]
    const { flow, events } = mpFlow()
    await flow.buy(PKG)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 5)
    expect(polls()).toBe(1)
    expect(flow.state()).toMatchObject({ phase: 'error', text: '订单不存在' })
    expect(events.errors.map((e) => e.code)).toEqual([404])
  })

  it('polling is bounded: pending for ever → "timeout" after the window, then silence; recheck polls again', async () => {
    const { flow } = mpFlow()
    await flow.buy(PKG)
    await vi.advanceTimersByTimeAsync(POLL_WINDOW_MS + 5000)
    const n = polls()
    expect(n).toBeGreaterThanOrEqual(POLL_WINDOW_MS / POLL_INTERVAL_MS - 2)
    expect(n).toBeLessThanOrEqual(POLL_WINDOW_MS / POLL_INTERVAL_MS + 1)
    expect(flow.state().phase).toBe('timeout')
    await vi.advanceTimersByTimeAsync(POLL_WINDOW_MS)
    expect(polls()).toBe(n)
    orders.o1 = [{ status: 'paid' }]
    flow.recheck()
    await vi.advanceTimersByTimeAsync(0)
    expect(polls()).toBe(n + 1)
    expect(flow.state().phase).toBe('paid')
  })

  it('stop (page left) ends polling and ignores an answer still on its way', async () => {
    const { flow, events } = mpFlow()
    await flow.buy(PKG)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 2)
    expect(polls()).toBe(2)
    // Hold the next answer, stop while it is in flight, then let it say "paid".
    const held = []
    const realRequest = uni.request
    uni.request = (o) => {
      if (o.url.includes('/api/pay/orders/o1')) {
        held.push(o)
        uni.requests.push({ opts: o })
        return {}
      }
      return realRequest(o)
    }
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)
    expect(held.length).toBe(1)
    flow.stop()
    held[0].success({ statusCode: 200, data: { status: 'paid', credit_micros: 1 } })
    await vi.advanceTimersByTimeAsync(POLL_WINDOW_MS)
    expect(polls()).toBe(3)
    expect(events.paid).toBe(0)
    expect(flow.state().phase).toBe('checking')
    expect(flow.polling()).toBe(false)
  })

  it('pause (page hidden) holds polling; resume looks again at once', async () => {
    orders.o1 = [{ status: 'pending' }, { status: 'pending' }, { status: 'paid' }]
    const { flow, events } = mpFlow()
    await flow.buy(PKG)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)
    expect(polls()).toBe(1)
    flow.pause()
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 10)
    expect(polls()).toBe(1)
    flow.resume()
    await vi.advanceTimersByTimeAsync(0)
    expect(polls()).toBe(2)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)
    expect(polls()).toBe(3)
    expect(events.paid).toBe(1)
  })

  it('hidden while the payment sheet is up (WeChat fires onHide): polling starts on resume', async () => {
    orders.o1 = [{ status: 'paid' }]
    let finish
    uni.requestPayment = vi.fn((o) => (finish = o))
    const events = { paid: 0 }
    const flow = createPayFlow({ api: payApi, channel: 'jsapi', requestPayment: requestWxPayment, onPaid: () => events.paid++ })
    const p = flow.buy(PKG)
    await vi.advanceTimersByTimeAsync(0)
    expect(flow.state().phase).toBe('paying')
    flow.pause()
    finish.success({ errMsg: 'requestPayment:ok' })
    await p
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 4)
    expect(polls()).toBe(0)
    flow.resume()
    await vi.advanceTimersByTimeAsync(0)
    expect(polls()).toBe(1)
    expect(events.paid).toBe(1)
  })

  it('order creation fails (pay not configured): the server message, no payment sheet', async () => {
    uni.createAnswer = () => ({ statusCode: 503, data: { code: 503, msg: '暂未开通微信支付', reason: 'pay_not_configured' } })
    const { flow, events } = mpFlow()
    await flow.buy(PKG)
    expect(flow.state()).toMatchObject({ phase: 'error', text: '暂未开通微信支付' })
    expect(uni.requestPayment).not.toHaveBeenCalled()
    expect(events.errors[0]).toMatchObject({ code: 503, reason: 'pay_not_configured', status: 503 })
    await vi.advanceTimersByTimeAsync(POLL_WINDOW_MS)
    expect(polls()).toBe(0)
  })

  it('a second tap while the order is being created is ignored', async () => {
    const { flow } = mpFlow()
    const a = flow.buy(PKG)
    flow.buy(PKG)
    await a
    expect(created.length).toBe(1)
  })

  it('H5: native order → QR code → paid: QR hidden, onPaid once', async () => {
    orders.o1 = [{ status: 'pending' }, { status: 'paid' }]
    const events = { paid: 0 }
    const qrcode = vi.fn(qrcodeDataUrl)
    const flow = createPayFlow({ api: payApi, channel: 'native', qrcode, onPaid: () => events.paid++ })
    await flow.buy(PKG)
    expect(created).toEqual([{ package_id: 'p10', channel: 'native' }])
    expect(qrcode).toHaveBeenCalledWith('weixin://wxpay/bizpayurl?pr=o1')
    expect(flow.state()).toMatchObject({ phase: 'waiting', order_id: 'o1', code_url: 'weixin://wxpay/bizpayurl?pr=o1' })
    expect(flow.state().qr).toMatch(/^data:image\/svg\+xml/)
    expect(flow.state().text).toContain('¥9.90')
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 3)
    expect(polls()).toBe(2)
    expect(flow.state()).toMatchObject({ phase: 'paid', qr: '' })
    expect(events.paid).toBe(1)
  })

  it('H5: a closed order hides the QR code', async () => {
    orders.o1 = [{ status: 'closed' }]
    const flow = createPayFlow({ api: payApi, channel: 'native', qrcode: qrcodeDataUrl })
    await flow.buy(PKG)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)
    expect(flow.state()).toMatchObject({ phase: 'closed', qr: '' })
  })
})
