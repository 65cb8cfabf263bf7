// @vitest-environment happy-dom
// The chat page itself (src/pages/chat/chat.vue) mounted with a mocked `uni`: send, streamed
// mini-program chunks, a dropped request resumed, stop button, restore after a reload.
import { describe, it, expect, beforeEach } from 'vitest'
import { mount } from '@vue/test-utils'
import { h } from 'vue'
import ChatPage from '../src/pages/chat/chat.vue'
import { setBaseUrl, setPlatform } from '../src/services/platform.js'
import { setToken, savePending } from '../src/services/session.js'
import { renderMarkdown, plainText } from '../src/utils/markdown.js'
import { ANSWER, DELTAS, mpWrites, bytesOf, asArrayBuffer } from './fixtures.js'
import { createMockUni, until, tick } from './mock-uni.js'

let uni
beforeEach(() => {
  uni = createMockUni()
  const bus = {}
  uni.$on = (e, f) => (bus[e] = bus[e] || []).push(f)
  uni.$off = (e, f) => (bus[e] = (bus[e] || []).filter((x) => x !== f))
  uni.$emit = (e) => (bus[e] || []).forEach((f) => f())
  uni.pageScrollTo = () => {}
  uni.onNetworkStatusChange = (f) => (uni.net = f)
  uni.offNetworkStatusChange = () => {}
  globalThis.uni = uni
  setBaseUrl('http://gw')
  setPlatform('mp')
  setToken('T')
})

async function mountPage() {
  // rich-text is a uni built-in: stand in a component that shows the nodes' text.
  const RichText = { props: ['nodes'], render() { return h('div', plainText(this.nodes || [])) } }
  const w = mount(ChatPage, { global: { components: { 'rich-text': RichText } } })
  ChatPage.onLoad.call(w.vm, {})
  await w.vm.$nextTick()
  return w
}
const chatRequests = () => uni.requests.filter((r) => r.opts.enableChunked)
const text = (w, id) => w.findAll(`[data-testid=${id}]`).map((e) => e.text().replace(/\s+/g, ''))
const expected = (s) => plainText(renderMarkdown(s)).replace(/\s+/g, '')

describe('chat page', () => {
  it('sends, renders the streamed answer, survives a dropped request, and goes back to "send"', async () => {
    const w = await mountPage()
    expect(w.find('[data-testid=chat-send]').exists()).toBe(true)
    await w.find('[data-testid=chat-input]').setValue('你好')
    await w.find('[data-testid=chat-send]').trigger('click')
    expect(text(w, 'message-user')).toEqual(['你好'])
    expect(w.find('[data-testid=chat-stop]').exists()).toBe(true)
    expect(w.find('[data-testid=chat-send]').exists()).toBe(false)
    const first = chatRequests()[0]
    expect(first.opts.url).toBe('http://gw/api/chat?client=mp')
    first.headers({ 'X-Message-Id': 'msg_1', 'X-Conversation-Id': 'conv_1' })
    const writes = mpWrites()
    for (const x of writes.slice(0, 3)) first.chunk(asArrayBuffer(bytesOf([x])))
    first.fail('request:fail timeout') // the 60 s cap
    await until(() => chatRequests().length === 2)
    const second = chatRequests()[1]
    const shown = DELTAS[0] + DELTAS[1]
    expect(second.opts.url).toBe(`http://gw/api/messages/msg_1/stream?offset=${[...shown].length}&client=mp`)
    for (const x of mpWrites([[...ANSWER].slice([...shown].length).join('')])) second.chunk(bytesOf([x]))
    second.succeed()
    await until(() => w.find('[data-testid=message-assistant]').attributes('data-status') === 'done')
    await w.vm.$nextTick()
    expect(text(w, 'message-assistant')).toEqual([expected(ANSWER)])
    expect(w.find('[data-testid=message-assistant]').attributes('data-message-id')).toBe('msg_1')
    expect(w.find('[data-testid=chat-send]').exists()).toBe(true)
    expect(uni.getStorageSync('chatgate.pending')).toBe('') // cleared when done
    expect(uni.getStorageSync('chatgate.conversation_id')).toBe('conv_1')
  })

  it('the app going to the background drops the request and resumes on return', async () => {
    const w = await mountPage()
    await w.find('[data-testid=chat-input]').setValue('q')
    await w.find('[data-testid=chat-send]').trigger('click')
    const first = chatRequests()[0]
    first.headers({ 'X-Message-Id': 'msg_2' })
    first.chunk(bytesOf(mpWrites().slice(0, 2)))
    uni.$emit('chatgate:app-hide')
    expect(first.aborted).toBe(true)
    await tick(10)
    expect(chatRequests().length).toBe(1)
    uni.$emit('chatgate:app-show')
    expect(chatRequests()[1].opts.url).toContain(`/api/messages/msg_2/stream?offset=${[...DELTAS[0]].length}`)
  })

  it('after a reload it shows the stored partial answer and resumes it', async () => {
    uni.json = (o) =>
      o.url.endsWith('/api/conversations/conv_1')
        ? { statusCode: 200, data: { id: 'conv_1', messages: [{ id: 'u1', role: 'user', content: '旧问题' }, { id: 'msg_3', role: 'assistant', content: '你', status: 'streaming' }] } }
        : { statusCode: 404, data: { code: 404, msg: 'x' } }
    savePending({ message_id: 'msg_3', conversation_id: 'conv_1', text: DELTAS[0] + DELTAS[1], user_text: '旧问题', updated_at: 1 })
    const w = await mountPage()
    await until(() => chatRequests().length === 1)
    const r = chatRequests()[0]
    expect(r.opts.url).toBe(`http://gw/api/messages/msg_3/stream?offset=${[...(DELTAS[0] + DELTAS[1])].length}&client=mp`)
    await w.vm.$nextTick()
    expect(text(w, 'message-user')).toEqual(['旧问题'])
    expect(w.findAll('[data-testid=message-assistant]').length).toBe(1)
    for (const x of mpWrites([[...ANSWER].slice([...(DELTAS[0] + DELTAS[1])].length).join('')])) r.chunk(bytesOf([x]))
    r.succeed()
    await until(() => w.find('[data-testid=message-assistant]').attributes('data-status') === 'done')
    await w.vm.$nextTick()
    expect(text(w, 'message-assistant')).toEqual([expected(ANSWER)])
  })

  it('stop posts /api/messages/{id}/stop', async () => {
    uni.json = () => ({ statusCode: 200, data: {} })
    const w = await mountPage()
    await w.find('[data-testid=chat-input]').setValue('q')
    await w.find('[data-testid=chat-send]').trigger('click')
    chatRequests()[0].headers({ 'X-Message-Id': 'msg_4' })
    await w.vm.$nextTick()
    await w.find('[data-testid=chat-stop]').trigger('click')
    expect(uni.requests.some((r) => r.opts.url === 'http://gw/api/messages/msg_4/stop' && r.opts.method === 'POST')).toBe(true)
  })
})
