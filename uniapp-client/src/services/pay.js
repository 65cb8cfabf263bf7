// WeChat Pay recharge: the package list, one purchase (create the order, pay, poll the order
// until it is paid or closed) and the money formatting. No DOM and no page here: the me page
// renders what `createPayFlow` reports, and vitest drives it with a mocked `uni`.
//
//   mini-program: POST /api/pay/orders {channel:"jsapi"} → uni.requestPayment(pay_params) → poll
//   H5:           POST /api/pay/orders {channel:"native"} → show code_url as a QR code → poll
//
// Polling is bounded (every POLL_INTERVAL_MS for at most POLL_WINDOW_MS), stops on paid/closed,
// retries network errors and 5xx, and stops when the page goes away (stop) or pauses while it
// is hidden (pause / resume). A cancelled or failed requestPayment still polls for a short
// while: the money may have moved anyway.
import { request, formatMoney } from './api.js'
import { platform } from './platform.js'

export var POLL_INTERVAL_MS = 1500
export var POLL_WINDOW_MS = 120000
export var AFTER_CANCEL_WINDOW_MS = 10000

// price_fen (an integer number of fen, 1/100 yuan) → "¥x.xx".
export function formatFen(fen) {
  var f = Math.round(Number(fen) || 0)
  var neg = f < 0
  if (neg) f = -f
  var yuan = Math.floor(f / 100)
  var rest = f % 100
  return (neg ? '-' : '') + '¥' + yuan + '.' + (rest < 10 ? '0' : '') + rest
}

// credit_micros is shown the way the balance is shown.
export function formatCredit(micros) {
  return formatMoney(micros)
}

// `{packages:[…]}` (or a bare array) → the packages that can be bought.
export function normalizePackages(body) {
  var list = body && Array.isArray(body.packages) ? body.packages : Array.isArray(body) ? body : []
  var out = []
  for (var i = 0; i < list.length; i++) {
    var p = list[i]
    if (!p || p.id === undefined || p.id === null || p.id === '') continue
    out.push({
      id: p.id,
      title: p.title ? String(p.title) : '充值套餐',
      price_fen: Number(p.price_fen) || 0,
      credit_micros: Number(p.credit_micros) || 0,
    })
  }
  return out
}

// jsapi in the mini-program, native (QR code) on H5.
export function payChannel() {
  return platform() === 'h5' ? 'native' : 'jsapi'
}

export var payApi = {
  packages: function () {
    return request('GET', '/api/pay/packages').then(normalizePackages)
  },
  createOrder: function (packageId, channel) {
    return request('POST', '/api/pay/orders', { package_id: packageId, channel: channel })
  },
  order: function (id) {
    return request('GET', '/api/pay/orders/' + encodeURIComponent(id))
  },
}

// uni.requestPayment as a promise (callbacks passed explicitly; the params are copied one by
// one, no object spread, for old mini-program runtimes).
export function requestWxPayment(params) {
  return new Promise(function (resolve, reject) {
    uni.requestPayment({
      provider: 'wxpay',
      timeStamp: String(params.timeStamp),
      nonceStr: params.nonceStr,
      package: params.package,
      signType: params.signType || 'RSA',
      paySign: params.paySign,
      success: resolve,
      fail: reject,
    })
  })
}

export function isPayCancel(err) {
  var m = (err && (err.errMsg || err.message)) || ''
  return /cancel/i.test(m)
}

// An order poll error worth retrying: no connection, a timeout, a 5xx (or a 408/429).
export function isRetryable(err) {
  var s = err && typeof err.status === 'number' ? err.status : 0
  return s === 0 || s >= 500 || s === 408 || s === 429
}

// What the status line says in each phase.
export function statusText(s) {
  switch (s.phase) {
    case 'creating':
      return '正在创建订单…'
    case 'paying':
      return '请在微信支付中完成付款…'
    case 'waiting':
      return '请使用微信扫一扫支付 ' + formatFen(s.price_fen) + '，支付后自动到账'
    case 'checking':
      return '正在确认支付结果…'
    case 'cancelled':
      return '已取消支付'
    case 'failed':
      return '支付未完成：' + (s.error || '未知错误')
    case 'paid':
      return '支付成功，已到账 ' + formatCredit(s.credit_micros)
    case 'closed':
      return '订单已关闭或已过期，请重新下单'
    case 'timeout':
      return '暂未确认到支付结果；如已付款，请稍后点“刷新支付结果”'
    case 'error':
      return s.error || '出错了，请稍后再试'
    default:
      return ''
  }
}

var POLLING = { waiting: 1, checking: 1, cancelled: 1, failed: 1 }

// One purchase at a time. deps:
//   api            { createOrder(packageId, channel), order(id) } (payApi)
//   channel        'jsapi' | 'native' (payChannel())
//   requestPayment (pay_params) → Promise (requestWxPayment; only for jsapi)
//   qrcode         (code_url) → Promise<image src> (only for native)
//   onChange(state)  every change of the state below
//   onPaid(order)    once per paid order (the page refreshes the balance)
//   onError(err)     an order that could not be created (the page may toast / go to login)
//   setTimeout, clearTimeout, now, interval, window, afterCancelWindow: for tests
// state: { phase, order_id, code_url, qr, price_fen, credit_micros, package_id, error, text,
//          settled (the poll window of this phase is over) }
export function createPayFlow(deps) {
  var api = deps.api || payApi
  var setT = deps.setTimeout || setTimeout
  var clearT = deps.clearTimeout || clearTimeout
  var now = deps.now || Date.now
  var interval = deps.interval || POLL_INTERVAL_MS
  var windowMs = deps.window || POLL_WINDOW_MS
  var cancelWindow = deps.afterCancelWindow || AFTER_CANCEL_WINDOW_MS

  var state = { phase: 'idle' }
  var run = 0 // bumped by every new purchase and by stop(): stale callbacks check it
  var timer = null
  var inflight = false
  var deadline = 0
  var paused = false
  var paidNotified = {}

  function emit(patch) {
    var next = {}
    var k
    for (k in state) next[k] = state[k]
    for (k in patch) next[k] = patch[k]
    next.text = statusText(next)
    state = next
    if (deps.onChange) deps.onChange(state)
  }
  function clearTimer() {
    if (timer !== null) {
      clearT(timer)
      timer = null
    }
  }
  function schedule(r, ms) {
    clearTimer()
    if (paused) return // resume() polls again
    timer = setT(function () {
      timer = null
      poll(r)
    }, ms)
  }
  function startPolling(r, patch, ms) {
    deadline = now() + ms
    patch.settled = false
    emit(patch)
    schedule(r, interval)
  }
  function poll(r) {
    if (r !== run || inflight || !POLLING[state.phase]) return
    inflight = true
    api.order(state.order_id).then(
      function (o) {
        if (r !== run) return
        inflight = false
        var status = o && o.status
        if (status === 'paid') {
          var credit = o.credit_micros !== undefined && o.credit_micros !== null ? Number(o.credit_micros) : state.credit_micros
          emit({ phase: 'paid', qr: '', credit_micros: credit })
          if (!paidNotified[state.order_id]) {
            paidNotified[state.order_id] = true
            if (deps.onPaid) deps.onPaid(o)
          }
        } else if (status === 'closed') {
          emit({ phase: 'closed', qr: '' })
        } else {
          next(r)
        }
      },
      function (err) {
        if (r !== run) return
        inflight = false
        if (isRetryable(err)) next(r)
        else {
          emit({ phase: 'error', qr: '', error: (err && err.msg) || '查询订单失败' })
          if (deps.onError) deps.onError(err)
        }
      }
    )
  }
  function next(r) {
    if (now() >= deadline) {
      // The short window after a cancel / failure keeps its own message.
      if (state.phase === 'waiting' || state.phase === 'checking') emit({ phase: 'timeout', settled: true })
      else emit({ settled: true })
      return
    }
    schedule(r, interval)
  }

  function buy(pkg) {
    if (state.phase === 'creating' || state.phase === 'paying') return Promise.resolve(state)
    clearTimer()
    run++
    var r = run
    inflight = false
    paused = false
    emit({
      phase: 'creating',
      package_id: pkg.id,
      price_fen: pkg.price_fen,
      credit_micros: pkg.credit_micros,
      order_id: null,
      code_url: '',
      qr: '',
      error: '',
    })
    return api.createOrder(pkg.id, deps.channel).then(
      function (o) {
        if (r !== run) return state
        if (!o || !o.order_id) {
          emit({ phase: 'error', error: '创建订单失败' })
          return state
        }
        var id = o.order_id
        if (deps.channel === 'native') {
          if (!o.code_url) {
            emit({ phase: 'error', order_id: id, error: '创建订单失败：没有支付二维码' })
            return state
          }
          return Promise.resolve(deps.qrcode(o.code_url)).then(
            function (src) {
              if (r !== run) return state
              startPolling(r, { phase: 'waiting', order_id: id, code_url: o.code_url, qr: src }, windowMs)
              return state
            },
            function () {
              if (r !== run) return state
              emit({ phase: 'error', order_id: id, error: '二维码生成失败' })
              return state
            }
          )
        }
        if (!o.pay_params) {
          emit({ phase: 'error', order_id: id, error: '创建订单失败：缺少支付参数' })
          return state
        }
        emit({ phase: 'paying', order_id: id })
        return Promise.resolve()
          .then(function () {
            return deps.requestPayment(o.pay_params)
          })
          .then(
            function () {
              if (r === run) startPolling(r, { phase: 'checking' }, windowMs)
              return state
            },
            function (err) {
              if (r !== run) return state
              if (isPayCancel(err)) startPolling(r, { phase: 'cancelled' }, cancelWindow)
              else startPolling(r, { phase: 'failed', error: (err && (err.errMsg || err.message)) || '未知错误' }, cancelWindow)
              return state
            }
          )
      },
      function (err) {
        if (r !== run) return state
        emit({ phase: 'error', error: (err && err.msg) || '创建订单失败，请稍后再试' })
        if (deps.onError) deps.onError(err)
        return state
      }
    )
  }

  return {
    buy: buy,
    state: function () {
      return state
    },
    polling: function () {
      return timer !== null || inflight
    },
    // The page is hidden: no polling until resume() (a pending requestPayment goes on).
    pause: function () {
      paused = true
      clearTimer()
    },
    resume: function () {
      if (!paused) return
      paused = false
      if (POLLING[state.phase] && timer === null && !inflight) {
        if (now() >= deadline) deadline = now() + interval // one more look after coming back
        poll(run)
      }
    },
    // "刷新支付结果": look at the order again for a full window.
    recheck: function () {
      if (!state.order_id || state.phase === 'paid' || state.phase === 'closed' || state.phase === 'creating' || state.phase === 'paying') return
      if (POLLING[state.phase] && (timer !== null || inflight)) return
      run++
      paused = false
      var phase = deps.channel === 'native' && state.qr ? 'waiting' : 'checking'
      deadline = now() + windowMs
      emit({ phase: phase, settled: false })
      poll(run)
    },
    // The page is gone: nothing runs any more, late answers are ignored.
    stop: function () {
      run++
      clearTimer()
      inflight = false
    },
  }
}
