// Incremental UTF-8 decoding for streamed responses.
//
// Mini-programs have no reliable TextDecoder, and a chunk boundary can fall inside a
// multi-byte character, so this keeps the bytes of an unfinished character until the next
// chunk. Plain ES5-level code: no TextDecoder, TextEncoder, performance or `instanceof`.

var REPLACEMENT = 0xfffd

// Normalises what a platform hands us for one chunk into a Uint8Array, without `instanceof`
// (buffers from another realm — WeChat's native layer, jsdom — fail that test).
// Returns a string unchanged (some runtimes deliver text); null for empty input.
export function toBytes(data) {
  if (data == null) return null
  if (typeof data === 'string') return data
  if (ArrayBuffer.isView(data)) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  }
  if (Object.prototype.toString.call(data) === '[object ArrayBuffer]') {
    return new Uint8Array(data)
  }
  throw new TypeError('unsupported chunk type ' + Object.prototype.toString.call(data))
}

function fromCodeUnits(units) {
  var out = ''
  for (var i = 0; i < units.length; i += 4096) {
    out += String.fromCharCode.apply(null, units.slice(i, i + 4096))
  }
  return out
}

// The length of the sequence a lead byte starts (0 = not a lead byte).
function sequenceLength(b) {
  if (b < 0x80) return 1
  if (b >= 0xc2 && b <= 0xdf) return 2
  if (b >= 0xe0 && b <= 0xef) return 3
  if (b >= 0xf0 && b <= 0xf4) return 4
  return 0
}

// The valid range of the second byte for a lead byte (stricter than 0x80..0xbf for
// overlongs and surrogates, as WHATWG's decoder does).
function secondByteOk(lead, b) {
  if (lead === 0xe0) return b >= 0xa0 && b <= 0xbf
  if (lead === 0xed) return b >= 0x80 && b <= 0x9f
  if (lead === 0xf0) return b >= 0x90 && b <= 0xbf
  if (lead === 0xf4) return b >= 0x80 && b <= 0x8f
  return b >= 0x80 && b <= 0xbf
}

export function createUtf8Decoder() {
  var pending = [] // bytes of an unfinished character

  function decodeBytes(bytes, final) {
    var units = []
    var all = pending.length ? pending.concat(Array.prototype.slice.call(bytes)) : bytes
    pending = []
    var n = all.length
    var i = 0
    while (i < n) {
      var b = all[i]
      if (b < 0x80) {
        units.push(b)
        i++
        continue
      }
      var len = sequenceLength(b)
      if (len === 0) {
        units.push(REPLACEMENT)
        i++
        continue
      }
      // Check the continuation bytes we have.
      var j = 1
      var bad = false
      while (j < len && i + j < n) {
        var c = all[i + j]
        if (j === 1 ? !secondByteOk(b, c) : c < 0x80 || c > 0xbf) {
          bad = true
          break
        }
        j++
      }
      if (bad) {
        // Maximal subpart replaced by one U+FFFD; the offending byte is read again.
        units.push(REPLACEMENT)
        i += j
        continue
      }
      if (j < len) {
        // Incomplete at the end of the input.
        if (final) {
          units.push(REPLACEMENT)
        } else {
          pending = Array.prototype.slice.call(all, i, n)
        }
        break
      }
      var cp
      if (len === 2) cp = ((b & 0x1f) << 6) | (all[i + 1] & 0x3f)
      else if (len === 3) cp = ((b & 0x0f) << 12) | ((all[i + 1] & 0x3f) << 6) | (all[i + 2] & 0x3f)
      else cp = ((b & 0x07) << 18) | ((all[i + 1] & 0x3f) << 12) | ((all[i + 2] & 0x3f) << 6) | (all[i + 3] & 0x3f)
      if (cp > 0xffff) {
        cp -= 0x10000
        units.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff))
      } else {
        units.push(cp)
      }
      i += len
    }
    return fromCodeUnits(units)
  }

  return {
    // Decodes one chunk (ArrayBuffer, any typed array/DataView, or a string) and returns the
    // text it completes.
    write: function (data) {
      var bytes = toBytes(data)
      if (bytes == null) return ''
      if (typeof bytes === 'string') {
        var head = pending.length ? decodeBytes([], true) : ''
        return head + bytes
      }
      return decodeBytes(bytes, false)
    },
    // Ends the stream: an unfinished character becomes U+FFFD.
    end: function () {
      return pending.length ? decodeBytes([], true) : ''
    },
  }
}

// Encodes a string as UTF-8 bytes (for tests and shims; the app itself only decodes).
export function encodeUtf8(str) {
  var out = []
  for (var i = 0; i < str.length; i++) {
    var cp = str.charCodeAt(i)
    if (cp >= 0xd800 && cp <= 0xdbff && i + 1 < str.length) {
      var lo = str.charCodeAt(i + 1)
      if (lo >= 0xdc00 && lo <= 0xdfff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00)
        i++
      }
    }
    if (cp >= 0xd800 && cp <= 0xdfff) cp = REPLACEMENT
    if (cp < 0x80) out.push(cp)
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f))
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f))
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f))
  }
  return new Uint8Array(out)
}

// Unicode code points in a string — the `offset` unit of /api/messages/{id}/stream.
export function codePointLength(str) {
  var n = 0
  for (var i = 0; i < str.length; i++) {
    var c = str.charCodeAt(i)
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < str.length) {
      var d = str.charCodeAt(i + 1)
      if (d >= 0xdc00 && d <= 0xdfff) i++
    }
    n++
  }
  return n
}
