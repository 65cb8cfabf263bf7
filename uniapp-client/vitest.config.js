// Separate from vite.config.js on purpose: the uni plugin breaks vitest.
import { defineConfig } from 'vitest/config'
import vue from '@vitejs/plugin-vue'

export default defineConfig({
  plugins: [vue({ template: { compilerOptions: { isCustomElement: (t) => ['view', 'text', 'scroll-view', 'image'].includes(t) } } })],
  // Waits in tests are bounded polls, not timings: give a loaded CI machine room.
  test: { environment: 'node', include: ['tests/**/*.test.js'], testTimeout: 60000 },
})
