// Browser test of WeChat Pay recharge on the built H5 page (Native QR code), through Debian's
// Chromium and playwright-core:
//   CHATGATE_URL=http://127.0.0.1:8080 CHATGATE_PAY_MOCK_URL=http://127.0.0.1:9090 npm run test:browser
// (CHATGATE_PAY_PACKAGE=ID buys that package instead of the first one listed.)
// Runs only when the gateway has WeChat Pay configured: GET /api/pay/packages must list a package
// and POST /api/pay/orders (channel "native") must succeed; otherwise it prints
// "skipped: pay not configured" and passes. The payment itself is simulated by the mock pay
// server: POST {CHATGATE_PAY_MOCK_URL}/mock/pay {"code_url": "..."} = the user scanned the QR
// code and paid. Without CHATGATE_PAY_MOCK_URL only the QR code part runs.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'

const BASE = (process.env.CHATGATE_URL || '').replace(/\/+$/, '')
const MOCK = (process.env.CHATGATE_PAY_MOCK_URL || '').replace(/\/+$/, '')
// The package to buy (its id); the first one listed by default.
const PACKAGE = process.env.CHATGATE_PAY_PACKAGE || ''
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
const SHOT = (process.env.CHATGATE_SCREENSHOT || '/tmp/chatgate-h5.png').replace(/\.png$/, '-pay.png')
let skip = false
if (!BASE) skip = 'CHATGATE_URL is not set: pay browser test skipped'
else if (!fs.existsSync(CHROMIUM)) skip = `no Chromium at ${CHROMIUM}: pay browser test skipped (apt-get install -y chromium fonts-noto-cjk)`
if (skip) console.log('# ' + skip)

async function api(method, url, token, body) {
  const res = await fetch(url.startsWith('http') ? url : BASE + url, {
    method,
    headers: { ...(token ? { Authorization: 'Bearer ' + token } : {}), ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  })
  const text = await res.text()
  let json = null
  try {
    json = JSON.parse(text)
  } catch (e) {}
  return { status: res.status, json, text }
}

const yuan = (micros) => '¥' + (Math.round(micros / 10000) / 100).toFixed(2)

test('H5 WeChat Pay recharge (Native QR) in Chromium', { skip, timeout: 300000 }, async (t) => {
  const home = await fetch(BASE + '/').catch((e) => ({ ok: false, status: String(e.cause || e) }))
  assert.ok(home.ok, `GET ${BASE}/ failed (${home.status}): is the gateway running and serving the H5 page?`)

  // A fresh user, and the pay detection: packages listed and a Native order can be created.
  const username = 'pay_' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6)
  const password = 'secret-' + username
  const reg = await api('POST', '/api/auth/register', null, { username, password })
  assert.ok(reg.status === 200 || reg.status === 201, `register: ${reg.status} ${reg.text}`)
  const token = reg.json.token
  const pk = await api('GET', '/api/pay/packages')
  const packages = (pk.status === 200 && pk.json && Array.isArray(pk.json.packages) && pk.json.packages) || []
  if (!packages.length) {
    console.log(`# skipped: pay not configured (GET /api/pay/packages → ${pk.status}, ${packages.length} packages)`)
    return
  }
  const probe = await api('POST', '/api/pay/orders', token, { package_id: packages[0].id, channel: 'native' })
  if (probe.status !== 200 || !probe.json || !probe.json.code_url) {
    console.log(`# skipped: pay not configured (POST /api/pay/orders → ${probe.status} ${probe.text.slice(0, 200)})`)
    return
  }
  const pkg = PACKAGE ? packages.find((p) => p.id === PACKAGE) : packages[0]
  assert.ok(pkg, `CHATGATE_PAY_PACKAGE=${PACKAGE} is not among the packages ${packages.map((p) => p.id).join(', ')}`)

  const { chromium } = await import('playwright-core')
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  })
  const origin = new URL(BASE).origin
  const offsite = []
  const pageErrors = []
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, locale: 'zh-CN', isMobile: true, hasTouch: true })
  const page = await context.newPage()
  page.on('request', (r) => {
    const u = r.url()
    if (!u.startsWith(origin) && !u.startsWith('data:') && !u.startsWith('blob:')) offsite.push(u)
  })
  page.on('pageerror', (e) => pageErrors.push(String(e)))
  page.setDefaultTimeout(30000)

  try {
    await t.test('log in and open the me page: the packages are listed', async () => {
      await page.goto(BASE + '/')
      await page.locator('[data-testid=login-username]').waitFor()
      await page.fill('[data-testid=login-username]', username)
      await page.fill('[data-testid=login-password]', password)
      await page.click('[data-testid=login-submit]')
      await page.locator('[data-testid=chat-input]').waitFor()
      await page.goto(BASE + '/#/pages/me/me')
      await page.waitForFunction((n) => document.querySelectorAll('[data-testid=pay-package]').length === n, packages.length)
      const row = await page.locator(`[data-testid=pay-package][data-package-id="${pkg.id}"]`).innerText()
      assert.ok(row.includes(pkg.title), `package row "${row}" shows the title ${pkg.title}`)
      const price = '¥' + (pkg.price_fen / 100).toFixed(2)
      assert.ok(row.includes(price), `package row "${row}" shows the price ${price}`)
      assert.ok(row.includes(yuan(pkg.credit_micros)), `package row "${row}" shows the credit ${yuan(pkg.credit_micros)}`)
      assert.equal(await page.locator('[data-testid=pay-buy]').count(), packages.length)
    })

    let order
    await t.test('buy: the QR code appears with the amount', async () => {
      await page.waitForFunction(() => /¥/.test(document.querySelector('[data-testid=balance]')?.innerText || ''))
      const created = page.waitForResponse((r) => r.url().endsWith('/api/pay/orders') && r.request().method() === 'POST')
      await page.locator(`[data-testid=pay-package][data-package-id="${pkg.id}"] [data-testid=pay-buy]`).click()
      const res = await created
      assert.equal(res.status(), 200, 'order creation from the page')
      order = await res.json()
      assert.ok(order.order_id && order.code_url, 'order: ' + JSON.stringify(order))
      assert.equal(order.pay_params, undefined)
      const qr = page.locator('[data-testid=pay-qrcode]')
      await qr.waitFor()
      await page.locator('[data-testid=pay-qrcode] img, [data-testid=pay-qrcode] canvas').first().waitFor({ state: 'attached' })
      const drawn = await page.evaluate(() => {
        const img = document.querySelector('[data-testid=pay-qrcode] img')
        if (img) return { kind: 'img', w: img.naturalWidth, src: img.getAttribute('src').slice(0, 30) }
        const c = document.querySelector('[data-testid=pay-qrcode] canvas')
        return { kind: 'canvas', w: c.width, src: '' }
      })
      assert.ok(drawn.w > 0, 'the QR code has a size: ' + JSON.stringify(drawn))
      assert.equal(await qr.getAttribute('data-order-id'), String(order.order_id))
      assert.ok((await qr.innerText()).includes('¥' + (pkg.price_fen / 100).toFixed(2)), 'the amount is shown next to the QR code')
      assert.ok((await page.locator('[data-testid=pay-status]').innerText()).includes('扫'), 'status asks to scan')
      const srv = await api('GET', '/api/pay/orders/' + encodeURIComponent(order.order_id), token)
      assert.equal(srv.status, 200, srv.text)
      assert.equal(srv.json.status, 'pending')
    })

    await t.test('the mock pays: "支付成功", QR hidden, balance up by exactly the credit', { skip: MOCK ? false : 'CHATGATE_PAY_MOCK_URL is not set: the payment is not simulated' }, async () => {
      const balance = page.locator('[data-testid=balance]')
      const before = (await balance.innerText()).trim()
      const meBefore = await api('GET', '/api/me', token)
      const paid = await api('POST', MOCK + '/mock/pay', null, { code_url: order.code_url })
      assert.ok(paid.status >= 200 && paid.status < 300, 'mock pay: ' + paid.status + ' ' + paid.text)
      await page.waitForFunction(() => (document.querySelector('[data-testid=pay-status]')?.innerText || '').includes('支付成功'), null, { timeout: 60000 })
      assert.equal(await page.locator('[data-testid=pay-qrcode]').count(), 0, 'QR code hidden once paid')
      await page.waitForFunction((b) => document.querySelector('[data-testid=balance]').innerText.trim() !== b, before)
      const meAfter = await api('GET', '/api/me', token)
      assert.equal(meAfter.json.balance_micros - meBefore.json.balance_micros, pkg.credit_micros, 'credited exactly the package credit')
      assert.equal((await balance.innerText()).trim(), yuan(meAfter.json.balance_micros))
      assert.ok((await page.locator('[data-testid=pay-status]').innerText()).includes(yuan(pkg.credit_micros)))
      const srv = await api('GET', '/api/pay/orders/' + encodeURIComponent(order.order_id), token)
      assert.equal(srv.json.status, 'paid')
      // Credited once: later polls / notifications do not add more.
      await new Promise((r) => setTimeout(r, 4000))
      const meLater = await api('GET', '/api/me', token)
      assert.equal(meLater.json.balance_micros, meAfter.json.balance_micros)
      // For tests/pay_e2e.sh, which checks the same through the admin API.
      console.log(
        `# pay-e2e user_id=${meLater.json.id} order_id=${order.order_id} package=${pkg.id} ` +
          `credit_micros=${pkg.credit_micros} balance_before=${meBefore.json.balance_micros} balance_after=${meLater.json.balance_micros}`,
      )
      await page.screenshot({ path: SHOT })
    })

    await t.test('no request left the gateway origin; no page errors', () => {
      assert.deepEqual(offsite, [])
      assert.deepEqual(pageErrors, [])
    })
  } finally {
    await browser.close()
  }
})
