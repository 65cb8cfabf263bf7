import { defineConfig } from 'vite'
import uniModule from '@dcloudio/vite-plugin-uni'

// With "type": "module" the CommonJS plugin arrives as { default: fn }.
const uni = uniModule.default || uniModule

export default defineConfig({
  plugins: [uni()],
  define: {
    // src/config.js: the mini-program's gateway URL, settable at build time.
    'process.env.CHATGATE_MP_BASE_URL': JSON.stringify(process.env.CHATGATE_MP_BASE_URL || ''),
  },
})
