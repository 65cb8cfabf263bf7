// @vitest-environment happy-dom
// The me page (src/pages/me/me.vue) mounted with a mocked `uni`: the recharge packages, buying
// one on H5 (QR code) and in the mini-program (requestPayment), the balance refreshed once when
// paid, polling stopped when the page is left.
import { describe, it, expect, beforeEach, afterEach, vi } from 'vitest'
import { mount } from '@vue/test-utils'
import MePage from '../src/pages/me/me.vue'
import { setBaseUrl, setPlatform } from '../src/services/platform.js'
import { setToken } from '../src/services/session.js'
import { POLL_INTERVAL_MS, POLL_WINDOW_MS } from '../src/services/pay.js'
import { createMockUni } from './mock-uni.js'

const PACKAGES = [
  { id: 'p10', title: '10 元套餐', price_fen: 990, credit_micros: 10000000 },
  { id: 'p50', title: '50 元套餐', price_fen: 4500, credit_micros: 50000000 },
]

let uni
let balance
let orderAnswers
beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] })
  uni = createMockUni()
  globalThis.uni = uni
  setBaseUrl('http://gw')
  setToken('T')
  balance = 1500000
  orderAnswers = [{ status: 'pending' }, { status: 'paid' }]
  uni.packages = PACKAGES
  uni.json = (o) => {
    const path = o.url.replace('http://gw', '')
    if (path === '/api/me') return { statusCode: 200, data: { id: 'u1', username: 'alice', balance_micros: balance, free_messages_left_today: 3 } }
    if (path === '/api/pay/packages') return { statusCode: 200, data: { packages: uni.packages } }
    if (path === '/api/pay/orders' && o.method === 'POST') {
      return o.data.channel === 'native'
        ? { statusCode: 200, data: { order_id: 'o9', code_url: 'weixin://wxpay/bizpayurl?pr=o9' } }
        : { statusCode: 200, data: { order_id: 'o9', pay_params: { timeStamp: '1', nonceStr: 'n', package: 'prepay_id=x', signType: 'RSA', paySign: 's' } } }
    }
    if (path === '/api/pay/orders/o9') {
      const a = orderAnswers.length > 1 ? orderAnswers.shift() : orderAnswers[0]
      if (a.status === 'paid') balance = 1500000 + 50000000
      return { statusCode: 200, data: { credit_micros: 50000000, ...a } }
    }
    return { statusCode: 404, data: { code: 404, msg: 'not found' } }
  }
})
afterEach(() => {
  vi.useRealTimers()
})

const count = (path, method = 'GET') => uni.requests.filter((r) => r.opts.url === 'http://gw' + path && r.opts.method === method).length
const text = (w, id) => w.find(`[data-testid=${id}]`).text().trim()

async function mountPage(platform) {
  setPlatform(platform)
  const w = mount(MePage)
  MePage.onLoad.call(w.vm, {})
  MePage.onShow.call(w.vm)
  await vi.advanceTimersByTimeAsync(0)
  await w.vm.$nextTick()
  return w
}

describe('me page: recharge', () => {
  it('lists the packages: title, price in yuan, credit like the balance', async () => {
    const w = await mountPage('h5')
    expect(text(w, 'balance')).toBe('¥1.50')
    const rows = w.findAll('[data-testid=pay-package]')
    expect(rows.length).toBe(2)
    expect(rows[0].text()).toContain('10 元套餐')
    expect(rows[0].text()).toContain('¥9.90')
    expect(rows[0].text()).toContain('到账 ¥10.00')
    expect(rows[1].text()).toContain('¥45.00')
    expect(rows[1].attributes('data-package-id')).toBe('p50')
    expect(w.findAll('[data-testid=pay-buy]').length).toBe(2)
    expect(w.find('[data-testid=pay-status]').exists()).toBe(false)
    expect(w.find('[data-testid=pay-qrcode]').exists()).toBe(false)
    // the existing test ids are still there
    for (const id of ['balance', 'free-left', 'redeem-input', 'redeem-submit']) expect(w.find(`[data-testid=${id}]`).exists()).toBe(true)
  })

  it('no packages: no recharge card', async () => {
    uni.packages = []
    const w = await mountPage('h5')
    expect(w.find('[data-testid=pay-card]').exists()).toBe(false)
    expect(w.find('[data-testid=redeem-submit]').exists()).toBe(true)
  })

  it('H5: buy → QR code with the amount → paid: QR hidden, "支付成功", balance refreshed once', async () => {
    const w = await mountPage('h5')
    expect(count('/api/me')).toBe(1)
    await w.findAll('[data-testid=pay-buy]')[1].trigger('click')
    await vi.advanceTimersByTimeAsync(0)
    await w.vm.$nextTick()
    const post = uni.requests.find((r) => r.opts.method === 'POST')
    expect(post.opts.data).toEqual({ package_id: 'p50', channel: 'native' })
    const qr = w.find('[data-testid=pay-qrcode]')
    expect(qr.exists()).toBe(true)
    expect(qr.find('image').attributes('src')).toMatch(/^data:image\/svg\+xml/)
    expect(qr.text()).toContain('¥45.00')
    expect(text(w, 'pay-status')).toContain('¥45.00')
    expect(w.find('[data-testid=pay-status]').attributes('data-phase')).toBe('waiting')
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)
    await w.vm.$nextTick()
    expect(w.find('[data-testid=pay-qrcode]').exists()).toBe(true)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)
    await w.vm.$nextTick()
    expect(text(w, 'pay-status')).toBe('支付成功，已到账 ¥50.00')
    expect(w.find('[data-testid=pay-qrcode]').exists()).toBe(false)
    expect(count('/api/pay/orders/o9')).toBe(2)
    expect(count('/api/me')).toBe(2)
    expect(text(w, 'balance')).toBe('¥51.50')
    expect(uni.toasts.some((t) => t.title === '充值成功')).toBe(true)
    await vi.advanceTimersByTimeAsync(POLL_WINDOW_MS)
    expect(count('/api/pay/orders/o9')).toBe(2)
    expect(count('/api/me')).toBe(2)
  })

  it('mini-program: buy → uni.requestPayment(wxpay) → paid → balance refreshed once', async () => {
    uni.requestPayment = vi.fn((o) => Promise.resolve().then(() => o.success({ errMsg: 'requestPayment:ok' })))
    const w = await mountPage('mp')
    await w.findAll('[data-testid=pay-buy]')[0].trigger('click')
    await vi.advanceTimersByTimeAsync(0)
    expect(uni.requests.find((r) => r.opts.method === 'POST').opts.data).toEqual({ package_id: 'p10', channel: 'jsapi' })
    expect(uni.requestPayment).toHaveBeenCalledTimes(1)
    expect(uni.requestPayment.mock.calls[0][0]).toMatchObject({ provider: 'wxpay', package: 'prepay_id=x', signType: 'RSA', paySign: 's' })
    await w.vm.$nextTick()
    expect(text(w, 'pay-status')).toBe('正在确认支付结果…')
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 2)
    await w.vm.$nextTick()
    expect(text(w, 'pay-status')).toBe('支付成功，已到账 ¥50.00')
    expect(count('/api/me')).toBe(2)
    expect(text(w, 'balance')).toBe('¥51.50')
    expect(w.find('[data-testid=pay-qrcode]').exists()).toBe(false)
  })

  it('mini-program: cancel says so, offers a re-check after the short poll', async () => {
    uni.requestPayment = vi.fn((o) => Promise.resolve().then(() => o.fail({ errMsg: 'requestPayment:fail cancel' })))
    orderAnswers = [{ status: 'pending' }]
    const w = await mountPage('mp')
    await w.findAll('[data-testid=pay-buy]')[0].trigger('click')
    await vi.advanceTimersByTimeAsync(0)
    await w.vm.$nextTick()
    expect(text(w, 'pay-status')).toBe('已取消支付')
    expect(w.find('[data-testid=pay-recheck]').exists()).toBe(false)
    await vi.advanceTimersByTimeAsync(30000)
    await w.vm.$nextTick()
    expect(text(w, 'pay-status')).toBe('已取消支付')
    expect(w.find('[data-testid=pay-recheck]').exists()).toBe(true)
    expect(uni.toasts.length).toBe(0)
  })

  it('order creation fails: the server message is shown', async () => {
    const json = uni.json
    uni.json = (o) => (o.method === 'POST' ? { statusCode: 503, data: { code: 503, msg: '暂未开通微信支付' } } : json(o))
    const w = await mountPage('h5')
    await w.findAll('[data-testid=pay-buy]')[0].trigger('click')
    await vi.advanceTimersByTimeAsync(0)
    await w.vm.$nextTick()
    expect(text(w, 'pay-status')).toBe('暂未开通微信支付')
    expect(w.find('[data-testid=pay-qrcode]').exists()).toBe(false)
  })

  it('leaving the page (onUnload) stops polling; hiding it pauses until onShow', async () => {
    orderAnswers = [{ status: 'pending' }]
    const w = await mountPage('h5')
    await w.findAll('[data-testid=pay-buy]')[0].trigger('click')
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 2)
    expect(count('/api/pay/orders/o9')).toBe(2)
    MePage.onHide.call(w.vm)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 4)
    expect(count('/api/pay/orders/o9')).toBe(2)
    MePage.onShow.call(w.vm)
    await vi.advanceTimersByTimeAsync(0)
    expect(count('/api/pay/orders/o9')).toBe(3)
    MePage.onUnload.call(w.vm)
    await vi.advanceTimersByTimeAsync(POLL_WINDOW_MS)
    expect(count('/api/pay/orders/o9')).toBe(3)
    w.unmount()
  })
})
