// Where the mini-program finds the gateway. The H5 page ignores this: the gateway serves it,
// so it talks to its own origin. Edit the default below, or build with
// `CHATGATE_MP_BASE_URL=https://chat.example.com npm run build:mp-weixin` (vite.config.js
// substitutes it at build time). Real devices need an https domain listed under the
// mini-program's "request 合法域名".
export var MP_BASE_URL = process.env.CHATGATE_MP_BASE_URL || 'http://127.0.0.1:8080'
