// JSON calls to the gateway's HTTP API through uni.request (both platforms), and the one place
// that turns the error-code table into what the user sees.
import { baseUrl } from './platform.js'
import { getToken, clearToken } from './session.js'

export function ApiError(code, msg, reason, status) {
  this.code = code
  this.msg = msg
  this.reason = reason
  this.status = status
  this.message = msg
}
ApiError.prototype = Object.create(Error.prototype)
ApiError.prototype.constructor = ApiError
ApiError.prototype.name = 'ApiError'

var STATUS_CODE = { 401: -1, 402: 101, 403: 102, 413: 102, 429: 102, 404: 404, 400: 10001, 502: 11000, 504: 11000 }

export function authHeader() {
  var t = getToken()
  return t ? { Authorization: 'Bearer ' + t } : {}
}

export function request(method, path, data) {
  return new Promise(function (resolve, reject) {
    var header = authHeader()
    header['Content-Type'] = 'application/json'
    uni.request({
      url: baseUrl() + path,
      method: method,
      header: header,
      data: data,
      dataType: 'json',
      timeout: 20000,
      success: function (res) {
        var body = res.data
        if (typeof body === 'string') {
          try {
            body = JSON.parse(body)
          } catch (e) {}
        }
        var status = res.statusCode
        if (status >= 200 && status < 300 && !(body && typeof body.code === 'number' && body.code !== 0 && body.msg)) {
          resolve(body)
          return
        }
        var code = body && typeof body.code === 'number' ? body.code : STATUS_CODE[status] || 500
        var msg = (body && body.msg) || '请求失败（' + status + '）'
        reject(new ApiError(code, msg, body && body.reason, status))
      },
      fail: function (err) {
        reject(new ApiError(0, '网络连接失败，请稍后再试', 'network', 0, err))
      },
    })
  })
}

export var api = {
  register: function (username, password) {
    return request('POST', '/api/auth/register', { username: username, password: password })
  },
  login: function (username, password) {
    return request('POST', '/api/auth/login', { username: username, password: password })
  },
  guest: function (deviceId) {
    return request('POST', '/api/auth/guest', { device_id: deviceId })
  },
  wechat: function (code) {
    return request('POST', '/api/auth/wechat', { code: code })
  },
  me: function () {
    return request('GET', '/api/me')
  },
  conversations: function () {
    return request('GET', '/api/conversations')
  },
  conversation: function (id) {
    return request('GET', '/api/conversations/' + encodeURIComponent(id))
  },
  deleteConversation: function (id) {
    return request('DELETE', '/api/conversations/' + encodeURIComponent(id))
  },
  message: function (id) {
    return request('GET', '/api/messages/' + encodeURIComponent(id))
  },
  stop: function (id) {
    return request('POST', '/api/messages/' + encodeURIComponent(id) + '/stop', {})
  },
  redeem: function (code) {
    return request('POST', '/api/redeem', { code: code })
  },
}

// What a person expects for each error code (DESIGN "Error codes").
export function showError(err) {
  var code = err && typeof err.code === 'number' ? err.code : 500
  var msg = (err && err.msg) || '出错了，请稍后再试'
  if (code === -1) {
    clearToken()
    uni.showToast({ title: '请先登录', icon: 'none' })
    uni.reLaunch({ url: '/pages/login/login' })
  } else if (code === 101) {
    uni.showToast({ title: msg || '余额不足，请充值', icon: 'none', duration: 2500 })
    uni.navigateTo({ url: '/pages/me/me?recharge=1' })
  } else if (code === 102) {
    uni.showModal({ title: '提示', content: msg, showCancel: false })
  } else {
    uni.showToast({ title: msg, icon: 'none', duration: 2500 })
  }
}

// balance_micros → "¥x.xx" (integer arithmetic; rounds half away from zero to cents).
export function formatMoney(micros) {
  var m = Number(micros) || 0
  var neg = m < 0
  if (neg) m = -m
  var cents = Math.floor((m + 5000) / 10000)
  var yuan = Math.floor(cents / 100)
  var rest = cents % 100
  return (neg ? '-' : '') + '¥' + yuan + '.' + (rest < 10 ? '0' : '') + rest
}
