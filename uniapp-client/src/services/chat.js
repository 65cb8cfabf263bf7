// Wires an answer (answer.js) to the real platform: the transport for this build, the base
// URL, the token, uni storage and the JSON API.
import { createAnswer } from './answer.js'
import { openMpStream } from './transport-mp.js'
// #ifdef H5
import { openH5Stream } from './transport-h5.js'
// #endif
import { baseUrl, platform } from './platform.js'
import { getToken, savePending, clearPending } from './session.js'
import { api } from './api.js'

export function transportFor(p) {
  // #ifdef H5
  if (p === 'h5') return openH5Stream
  // #endif
  return openMpStream
}

export function newAnswer(ui, init, overrides) {
  var deps = {
    open: transportFor(platform()),
    baseUrl: baseUrl(),
    getToken: getToken,
    fetchMessage: api.message,
    stopMessage: api.stop,
    savePending: savePending,
    clearPending: clearPending,
  }
  if (overrides) for (var k in overrides) deps[k] = overrides[k]
  return createAnswer(deps, ui, init)
}
