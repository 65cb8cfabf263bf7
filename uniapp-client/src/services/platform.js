// Which platform the code runs on and the gateway's base URL there. uni's conditional
// compilation picks the branch at build time; unit tests (no uni preprocessing) see the
// defaults and set what they need with setBaseUrl / setPlatform.
import { MP_BASE_URL } from '../config.js'

var state = { platform: 'mp', baseUrl: MP_BASE_URL }
// #ifdef H5
state.platform = 'h5'
state.baseUrl = '' // the gateway serves this page: same origin
// #endif

export function platform() {
  return state.platform
}
export function setPlatform(p) {
  state.platform = p
}
export function baseUrl() {
  return state.baseUrl
}
export function setBaseUrl(u) {
  state.baseUrl = String(u || '').replace(/\/+$/, '')
}
