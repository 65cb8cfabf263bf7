// Browser test of the built H5 page (dist/build/h5, served by the gateway at /), driving
// Debian's Chromium through playwright-core:
//   CHATGATE_URL=http://127.0.0.1:8080 [CHATGATE_ADMIN_TOKEN=…] npm run test:browser
// Skips (with a message) when CHATGATE_URL is unset. Needs /usr/bin/chromium
// (apt-get install -y chromium fonts-noto-cjk) or CHROMIUM_PATH.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { renderMarkdown, plainText } from '../src/utils/markdown.js'

const BASE = (process.env.CHATGATE_URL || '').replace(/\/+$/, '')
const ADMIN = process.env.CHATGATE_ADMIN_TOKEN || ''
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
const SHOT = process.env.CHATGATE_SCREENSHOT || '/tmp/chatgate-h5.png'
let skip = false
if (!BASE) skip = 'CHATGATE_URL is not set: browser tests skipped (set it to a running gateway, e.g. http://127.0.0.1:8080)'
else if (!fs.existsSync(CHROMIUM)) skip = `no Chromium at ${CHROMIUM}: browser tests skipped (apt-get install -y chromium fonts-noto-cjk)`
if (skip) console.log('# ' + skip)

const squash = (s) => String(s).replace(/\s+/g, '')
const expectedText = (content) => squash(plainText(renderMarkdown(content)))

async function api(method, path, token, body) {
  const res = await fetch(BASE + path, {
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

// uni-h5 keeps setStorageSync values in localStorage (wrapped as {type,data} in some versions).
async function storedToken(page) {
  const raw = await page.evaluate(() => localStorage.getItem('chatgate.token'))
  if (!raw) return null
  try {
    const v = JSON.parse(raw)
    return typeof v === 'string' ? v : v && v.data
  } catch (e) {
    return raw
  }
}

async function lastAssistant(page) {
  return page.locator('[data-testid=message-assistant]').last()
}

async function waitDone(page, count, timeout = 120000) {
  await page.waitForFunction(
    (n) => {
      const all = document.querySelectorAll('[data-testid=message-assistant]')
      const m = all[all.length - 1]
      return all.length === n && m && ['done', 'stopped', 'failed'].includes(m.getAttribute('data-status'))
    },
    count,
    { timeout, polling: 100 }
  )
}

test('H5 page in Chromium', { skip, timeout: 400000 }, async (t) => {
  // Fail fast, with a clear message, when nothing answers at CHATGATE_URL.
  const home = await fetch(BASE + '/').catch((e) => ({ ok: false, status: String(e.cause || e) }))
  assert.ok(home.ok, `GET ${BASE}/ failed (${home.status}): is the gateway running and serving the H5 page?`)
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
  let token = null

  try {
    await t.test('register a fresh user through the UI', async () => {
      await page.goto(BASE + '/')
      await page.locator('[data-testid=login-username]').waitFor()
      // The testid sits on the real <input>, so fill works.
      assert.equal(await page.locator('[data-testid=login-username]').evaluate((e) => e.tagName), 'INPUT')
      const username = 'pw_' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6)
      await page.fill('[data-testid=login-username]', username)
      await page.fill('[data-testid=login-password]', 'secret-' + username)
      await page.click('[data-testid=register-submit]')
      await page.locator('[data-testid=chat-input]').waitFor()
      token = await storedToken(page)
      assert.ok(token, 'the page stored a token')
    })

    let firstId
    await t.test('send a message; the streamed answer equals GET /api/messages/{id}', async () => {
      await page.fill('[data-testid=chat-input]', '你好，介绍一下你自己')
      await page.click('[data-testid=chat-send]')
      await page.locator('[data-testid=chat-stop]').waitFor({ timeout: 10000 }).catch(() => {}) // may finish very fast
      await waitDone(page, 1)
      const m = await lastAssistant(page)
      assert.equal(await m.getAttribute('data-status'), 'done')
      firstId = await m.getAttribute('data-message-id')
      assert.ok(firstId, 'message id on the bubble')
      const srv = await api('GET', '/api/messages/' + firstId, token)
      assert.equal(srv.status, 200)
      assert.equal(srv.json.status, 'done')
      assert.ok(srv.json.content.length > 0)
      assert.equal(squash(await m.innerText()), expectedText(srv.json.content))
      assert.equal(await page.locator('[data-testid=message-user]').count(), 1)
      assert.equal(squash(await page.locator('[data-testid=message-user]').first().innerText()), squash('你好，介绍一下你自己'))
      assert.equal(await page.locator('[data-testid=chat-send]').isVisible(), true)
      await page.screenshot({ path: SHOT })
    })

    await t.test('reload mid-answer: the answer completes after the reload', async () => {
      await page.fill('[data-testid=chat-input]', '再说一遍')
      await page.click('[data-testid=chat-send]')
      // Wait until the answer has started streaming, then reload while it is still going.
      await page.waitForFunction(() => {
        const all = document.querySelectorAll('[data-testid=message-assistant]')
        const m = all[all.length - 1]
        return all.length === 2 && m.getAttribute('data-message-id') && m.innerText.trim().length >= 3
      }, null, { timeout: 60000, polling: 50 })
      const id = await (await lastAssistant(page)).getAttribute('data-message-id')
      const before = await api('GET', '/api/messages/' + id, token)
      const midAnswer = before.json && before.json.status === 'streaming'
      await page.reload()
      await page.locator('[data-testid=chat-input]').waitFor()
      await waitDone(page, 2)
      const m = await lastAssistant(page)
      assert.equal(await m.getAttribute('data-message-id'), id)
      assert.equal(await m.getAttribute('data-status'), 'done')
      const srv = await api('GET', '/api/messages/' + id, token)
      assert.equal(srv.json.status, 'done')
      assert.equal(squash(await m.innerText()), expectedText(srv.json.content))
      assert.equal(await page.locator('[data-testid=message-user]').count(), 2)
      if (!midAnswer) console.log('# note: the answer was already done at reload time (fast model); resume path not exercised')
      else console.log('# reload happened mid-answer (server status was streaming)')
    })

    await t.test('stop: the answer ends where the server stopped it', async () => {
      await page.fill('[data-testid=chat-input]', '请停下')
      await page.click('[data-testid=chat-send]')
      await page.waitForFunction(() => {
        const all = document.querySelectorAll('[data-testid=message-assistant]')
        return all.length === 3 && all[2].getAttribute('data-message-id') && all[2].innerText.trim().length >= 2
      }, null, { timeout: 60000, polling: 50 })
      const clicked = await page
        .click('[data-testid=chat-stop]', { timeout: 2000 })
        .then(() => true)
        .catch(() => false) // a fast model may have finished already
      await waitDone(page, 3)
      const m = await lastAssistant(page)
      const id = await m.getAttribute('data-message-id')
      const srv = await api('GET', '/api/messages/' + id, token)
      assert.equal(await m.getAttribute('data-status'), srv.json.status)
      if (clicked) assert.ok(['stopped', 'done'].includes(srv.json.status))
      assert.equal(squash(await m.innerText()).replace('（已停止生成）', ''), expectedText(srv.json.content))
      await page.locator('[data-testid=chat-send]').waitFor()
    })

    await t.test('redeem a code on the me page; the balance changes', { skip: ADMIN ? false : 'CHATGATE_ADMIN_TOKEN is not set: redeem flow skipped' }, async () => {
      const mint = await api('POST', '/admin/redeem-codes', ADMIN, { count: 1, amount_micros: 5000000 })
      assert.equal(mint.status, 200, 'mint: ' + mint.text)
      const code = mint.json.codes[0]
      await page.goto(BASE + '/#/pages/me/me')
      const balance = page.locator('[data-testid=balance]')
      await page.waitForFunction(() => /¥/.test(document.querySelector('[data-testid=balance]')?.innerText || ''))
      const before = (await balance.innerText()).trim()
      const meBefore = await api('GET', '/api/me', token)
      await page.fill('[data-testid=redeem-input]', code)
      await page.click('[data-testid=redeem-submit]')
      await page.waitForFunction((b) => document.querySelector('[data-testid=balance]').innerText.trim() !== b, before)
      const after = (await balance.innerText()).trim()
      const meAfter = await api('GET', '/api/me', token)
      assert.equal(meAfter.json.balance_micros - meBefore.json.balance_micros, 5000000)
      const yuan = (m) => '¥' + (Math.round(m / 10000) / 100).toFixed(2)
      assert.equal(after, yuan(meAfter.json.balance_micros))
      await page.screenshot({ path: SHOT.replace(/\.png$/, '-me.png') })
    })

    await t.test('no request left the gateway origin; no page errors', () => {
      assert.deepEqual(offsite, [])
      assert.deepEqual(pageErrors, [])
    })
  } finally {
    await browser.close()
  }
})
