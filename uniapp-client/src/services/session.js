// The login token, the guest device id and the answer that is still arriving, kept in uni
// storage so they survive a reload (H5) or a restart (mini-program).
var TOKEN = 'chatgate.token'
var DEVICE = 'chatgate.device_id'
var PENDING = 'chatgate.pending'
var CONVERSATION = 'chatgate.conversation_id'

function get(key) {
  try {
    var v = uni.getStorageSync(key)
    return v === '' || v === undefined ? null : v
  } catch (e) {
    return null
  }
}
function set(key, value) {
  try {
    uni.setStorageSync(key, value)
  } catch (e) {
    // storage full or unavailable: the app still works, it just cannot resume after a reload
  }
}
function remove(key) {
  try {
    uni.removeStorageSync(key)
  } catch (e) {}
}

export function getToken() {
  return get(TOKEN)
}
export function setToken(t) {
  set(TOKEN, t)
}
export function clearToken() {
  remove(TOKEN)
  remove(PENDING)
  remove(CONVERSATION)
}

export function deviceId() {
  var id = get(DEVICE)
  if (!id) {
    id = 'dev-' + Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 12)
    set(DEVICE, id)
  }
  return id
}

// { message_id, conversation_id, text, user_text, updated_at }
export function loadPending() {
  var p = get(PENDING)
  if (typeof p === 'string') {
    try {
      p = JSON.parse(p)
    } catch (e) {
      p = null
    }
  }
  return p && p.message_id ? p : null
}
export function savePending(p) {
  set(PENDING, JSON.stringify(p))
}
export function clearPending() {
  remove(PENDING)
}

export function lastConversation() {
  return get(CONVERSATION)
}
export function setLastConversation(id) {
  if (id) set(CONVERSATION, id)
  else remove(CONVERSATION)
}
