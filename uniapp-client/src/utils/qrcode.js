// A WeChat Pay Native `code_url` → an image src (an SVG data URL) for the H5 page, drawn by the
// `qrcode` npm package, bundled: nothing is fetched at run time. The mini-program never shows a
// QR code (it pays with uni.requestPayment), so the library is only compiled into the H5 build.
// #ifdef H5
import QRCode from 'qrcode'
// #endif

export function qrcodeDataUrl(text) {
  // #ifdef H5
  return QRCode.toString(String(text), { type: 'svg', errorCorrectionLevel: 'M', margin: 2, width: 220, color: { dark: '#000000', light: '#ffffff' } }).then(function (svg) {
    return 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(svg)
  })
  // #endif
  // #ifndef H5
  return Promise.reject(new Error('QR codes are only shown on H5'))
  // #endif
}
