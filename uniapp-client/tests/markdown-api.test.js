import { describe, it, expect, beforeEach } from 'vitest'
import { renderMarkdown, plainText } from '../src/utils/markdown.js'
import { formatMoney, showError, request } from '../src/services/api.js'
import { setBaseUrl } from '../src/services/platform.js'
import { setToken, getToken } from '../src/services/session.js'
import { createMockUni } from './mock-uni.js'

function names(nodes, out = []) {
  for (const n of nodes) {
    if (n.name) out.push(n.name)
    if (n.children) names(n.children, out)
  }
  return out
}

describe('markdown renderer', () => {
  it('renders code fences, inline code, bold, headings, lists and quotes', () => {
    const nodes = renderMarkdown('# 标题\n\n这是 **粗体** 和 `code`。\n\n```js\nlet a = 1 < 2\n```\n\n- 一\n- 二\n\n1. x\n\n> 引用')
    expect(names(nodes)).toEqual(['div', 'div', 'strong', 'code', 'pre', 'span', 'ul', 'li', 'li', 'ol', 'li', 'div'])
    expect(plainText(nodes)).toBe('标题这是 粗体 和 code。jslet a = 1 < 2一二x引用')
  })

  it('never produces markup from the answer: HTML stays text, & survives entity decoding', () => {
    const src = '<img src=x onerror=alert(1)> &lt; <script>x</script> [a](javascript:alert(1))'
    const nodes = renderMarkdown(src)
    expect(names(nodes)).toEqual(['div', 'span'])
    for (const n of JSON.stringify(nodes).match(/"attrs":\{[^}]*\}/g)) expect(n).toMatch(/^"attrs":\{"style":"[^"]*"\}$/)
    expect(plainText(nodes)).toBe('<img src=x onerror=alert(1)> &lt; <script>x</script> a)')
    expect(JSON.stringify(nodes)).toContain('&amp;lt;')
  })

  it('an unclosed fence (mid-stream) is a code block so far', () => {
    const nodes = renderMarkdown('看：\n```py\nprint(1)')
    expect(names(nodes)).toEqual(['div', 'pre', 'span'])
    expect(plainText(nodes)).toBe('看：pyprint(1)')
  })
})

describe('api helpers', () => {
  let uni
  beforeEach(() => {
    uni = createMockUni()
    globalThis.uni = uni
    setBaseUrl('http://gw')
  })

  it('formats balance_micros as ¥x.xx', () => {
    expect(formatMoney(0)).toBe('¥0.00')
    expect(formatMoney(5000000)).toBe('¥5.00')
    expect(formatMoney(1234567)).toBe('¥1.23')
    expect(formatMoney(995000)).toBe('¥1.00')
    expect(formatMoney(-20000)).toBe('-¥0.02')
  })

  it('maps error codes to what a person expects', () => {
    setToken('T')
    showError({ code: 101, msg: '余额不足' })
    expect(uni.navigations.pop()).toEqual(['navigateTo', '/pages/me/me?recharge=1'])
    expect(uni.toasts.pop().title).toBe('余额不足')
    showError({ code: 102, msg: '今日免费次数已用完' })
    expect(uni.toasts.pop()).toMatchObject({ modal: true, content: '今日免费次数已用完' })
    showError({ code: 11000, msg: '上游失败' })
    expect(uni.toasts.pop()).toMatchObject({ title: '上游失败', icon: 'none' })
    expect(uni.navigations.length).toBe(0)
    showError({ code: -1, msg: '登录已过期' })
    expect(uni.navigations.pop()).toEqual(['reLaunch', '/pages/login/login'])
    expect(getToken()).toBe(null)
  })

  it('request() sends the token and turns an HTTP error body into an ApiError', async () => {
    setToken('T')
    uni.json = (o) => ({ statusCode: 402, data: { code: 101, msg: '余额不足' } })
    await expect(request('POST', '/api/redeem', { code: 'x' })).rejects.toMatchObject({ code: 101, msg: '余额不足', status: 402 })
    expect(uni.requests[0].opts.header.Authorization).toBe('Bearer T')
    expect(uni.requests[0].opts.url).toBe('http://gw/api/redeem')
    uni.json = () => ({ statusCode: 200, data: { id: 'u', balance_micros: 1 } })
    await expect(request('GET', '/api/me')).resolves.toEqual({ id: 'u', balance_micros: 1 })
  })
})
