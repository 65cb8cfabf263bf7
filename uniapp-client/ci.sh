#!/usr/bin/env bash
# CI entry for the uni-app client. Run from anywhere:  uniapp-client/ci.sh
#   1. npm ci (from package-lock.json)
#   2. unit tests (vitest)
#   3. H5 build — and check that the committed dist/build/h5 is what the sources build to
#      (the gateway embeds it) — then the mp-weixin build
#   4. with CHATGATE_URL set: live tests (node:test) and the Chromium browser test
#      (CHATGATE_ADMIN_TOKEN enables the redeem flow; CHATGATE_PAY_MOCK_URL lets the WeChat Pay
#      test settle its order; CHROMIUM_PATH overrides /usr/bin/chromium)
# Exits non-zero on any failure. Knobs: CHATGATE_CI_SKIP_INSTALL=1 reuses node_modules;
# CHATGATE_SKIP_BROWSER=1 skips the browser test even with CHATGATE_URL set.
set -uo pipefail
cd "$(dirname "$0")"

LOG_DIR="$(mktemp -d)"
trap 'rm -rf "$LOG_DIR"' EXIT
SUMMARY=()
FAILED=0

step() { # name, command...
  local name="$1"; shift
  local log="$LOG_DIR/${name// /_}.log"
  local t0=$SECONDS
  echo "==> $name"
  if "$@" >"$log" 2>&1; then
    echo "    ok (${name}: $((SECONDS - t0)) s)"
    return 0
  fi
  echo "    FAILED (${name}: $((SECONDS - t0)) s); output:"
  sed 's/^/    | /' "$log" | tail -n 80
  FAILED=1
  return 1
}
summarise() { # name, log-file, grep pattern
  local lines
  lines="$(sed -E 's/\x1b\[[0-9;]*m//g' "$2" | grep -aE "$3" | sed -E 's/^[[:space:]]+//' | tr '\n' ' ')"
  SUMMARY+=("$1: ${lines:-no summary line}")
}
finish() {
  echo
  echo "==> summary"
  for s in "${SUMMARY[@]}"; do echo "    $s"; done
  if [ "$FAILED" -ne 0 ]; then echo "uniapp-client CI: FAILED"; exit 1; fi
  echo "uniapp-client CI: OK"
  exit 0
}

export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false

if [ "${CHATGATE_CI_SKIP_INSTALL:-}" = "1" ] && [ -d node_modules ]; then
  echo "==> npm ci skipped (CHATGATE_CI_SKIP_INSTALL=1)"
else
  step "npm ci" npm ci --prefer-offline || finish
fi

step "unit tests" npx vitest run
summarise "unit tests (vitest)" "$LOG_DIR/unit_tests.log" '^\s*(Test Files|Tests)\s'

# The committed H5 output must be what these sources build to.
COMMITTED="$LOG_DIR/h5-committed"
if [ -d dist/build/h5 ]; then cp -r dist/build/h5 "$COMMITTED"; fi
if step "build h5" npm run build:h5; then
  if [ ! -d "$COMMITTED" ]; then
    echo "    dist/build/h5 was missing: built it now — commit it"; FAILED=1
    SUMMARY+=("h5 build: dist/build/h5 was not committed")
  elif diff -r "$COMMITTED" dist/build/h5 >"$LOG_DIR/h5.diff" 2>&1; then
    SUMMARY+=("h5 build: identical to the committed dist/build/h5 ($(du -sb dist/build/h5 | cut -f1) bytes)")
  else
    echo "    dist/build/h5 differs from the committed one: run 'npm run build:h5' and commit dist/build/h5"
    head -n 20 "$LOG_DIR/h5.diff" | sed 's/^/    | /'
    FAILED=1
    SUMMARY+=("h5 build: STALE (committed dist/build/h5 differs from a fresh build)")
  fi
fi
step "build mp-weixin" npm run build:mp-weixin && SUMMARY+=("mp-weixin build: ok")

if [ -n "${CHATGATE_URL:-}" ]; then
  step "live tests" node --test --test-reporter=spec tests-live/
  summarise "live tests (node:test)" "$LOG_DIR/live_tests.log" '^ℹ (tests|pass|fail|skipped) '
  if [ "${CHATGATE_SKIP_BROWSER:-}" = "1" ]; then
    SUMMARY+=("browser test: skipped (CHATGATE_SKIP_BROWSER=1)")
  elif [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
    echo "==> browser test: no Chromium at ${CHROMIUM_PATH:-/usr/bin/chromium} (apt-get install -y chromium fonts-noto-cjk)"
    SUMMARY+=("browser test: FAILED (no Chromium)")
    FAILED=1
  else
    step "browser test" node --test --test-reporter=spec tests-browser/
    summarise "browser test (node:test + Chromium)" "$LOG_DIR/browser_test.log" '^ℹ (tests|pass|fail|skipped) '
    grep -a '^# ' "$LOG_DIR/browser_test.log" | sed 's/^/    /'
  fi
else
  SUMMARY+=("live + browser tests: skipped (CHATGATE_URL is not set)")
fi

finish
