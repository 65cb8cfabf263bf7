#!/usr/bin/env bash
# WeChat Pay recharge end to end, as a reseller would try it: the built gateway
# (`chatgate`) with `[wechat_pay]` pointed at the mock WeChat Pay server
# (`examples/mock_wechat_pay`), and the H5 page in Chromium buying a package by its Native
# QR code (uniapp-client/tests-browser/pay.test.mjs; the mock simulates the scan and the
# payment). Two runs, each with a fresh mock and gateway:
#   1. the notification arrives three times at once;
#   2. the notification is lost: the page's polling of GET /api/pay/orders/{id} makes the
#      gateway query WeChat Pay and find the payment.
# After each, the admin API must show the balance up by exactly the package's credit, one
# `pay` ledger entry, and the ledger invariant holding — also after three more late copies
# of the notification.
#
# Usage: tests/pay_e2e.sh [BIN_DIR]    (default: target/debug, as built by `cargo test`)
# Needs node (and uniapp-client/node_modules; `npm ci` is run when missing) and Chromium
# (CHROMIUM_PATH, default /usr/bin/chromium). Exits non-zero on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN_DIR="${1:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}"
BIN_DIR="$(cd "$BIN_DIR" 2>/dev/null && pwd)" || { echo "pay e2e: FAILED: no directory ${1:-target/debug}" >&2; exit 1; }
GATEWAY="$BIN_DIR/chatgate"
MOCK="$BIN_DIR/examples/mock_wechat_pay"
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
ADMIN_TOKEN="pay-e2e-admin-$RANDOM$RANDOM"

fail() { echo "pay e2e: FAILED: $*" >&2; exit 1; }
for bin in "$GATEWAY" "$MOCK"; do
  [ -x "$bin" ] || fail "no $bin (build it with 'cargo test', or 'cargo build --bin chatgate --example mock_wechat_pay')"
done
[ -x "$CHROMIUM" ] || fail "no Chromium at $CHROMIUM (apt-get install -y chromium fonts-noto-cjk)"
command -v node >/dev/null || fail "no node"
if [ ! -d "$ROOT/uniapp-client/node_modules/playwright-core" ]; then
  echo "== npm ci in uniapp-client (node_modules missing)"
  (cd "$ROOT/uniapp-client" && npm ci --prefer-offline --no-audit --no-fund >/dev/null)
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ] && [ -n "${KEEP_LOGS:-}" ]; then
    echo "logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

# Prints the address a process logged as `listening on http://ADDR`.
address_in() {
  for _ in $(seq 1 600); do
    local addr
    addr="$(grep -ao 'listening on http://[0-9.:]*' "$1" | head -n1 | sed 's/listening on //' || true)"
    if [ -n "$addr" ]; then echo "$addr"; return 0; fi
    sleep 0.1
  done
  echo "no 'listening on' line in $1:" >&2
  cat "$1" >&2
  return 1
}

# Shows the end of the logs of a run, then fails.
fail_with_logs() { # dir, message
  for log in "$1"/mock.log "$1"/gateway.log "$1"/browser.log; do
    [ -f "$log" ] || continue
    echo "---- $log (last 60 lines)" >&2
    tail -n 60 "$log" >&2
  done
  fail "$2"
}

# One JSON HTTP call through node: METHOD URL [BODY] [TOKEN] → the JSON body on stdout;
# fails unless the status is 2xx.
call() {
  node -e '
    const [method, url, body, token] = process.argv.slice(1)
    const headers = { "Content-Type": "application/json" }
    if (token) headers.Authorization = "Bearer " + token
    fetch(url, { method, headers, body: body || undefined })
      .then(async (r) => {
        const text = await r.text()
        if (!r.ok) { console.error(`${method} ${url} → ${r.status} ${text}`); process.exit(1) }
        process.stdout.write(text || "null")
      })
      .catch((e) => { console.error(`${method} ${url}: ${e.cause || e}`); process.exit(1) })
  ' "$1" "$2" "${3:-}" "${4:-}"
}

# Field PATH (a JS expression on `j`) of the JSON on stdin.
field() {
  node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
    const j = JSON.parse(s); const v = eval(process.argv[1]); process.stdout.write(typeof v === "string" ? v : JSON.stringify(v)) })' "$1"
}

yuan() { node -e 'process.stdout.write("¥" + (Math.round(Number(process.argv[1]) / 10000) / 100).toFixed(2))' "$1"; }

RESULTS=()

# scenario NAME PACKAGE EXPECTED_NOTIFICATIONS MOCK_FLAGS...
scenario() {
  local name="$1" buy="$2" expected="$3"; shift 3
  local dir="$WORK/$name"
  mkdir -p "$dir"
  echo "== $name: mock WeChat Pay ($*)"
  "$MOCK" --listen 127.0.0.1:0 --keys-dir "$dir/keys" "$@" >"$dir/mock.log" 2>&1 &
  PIDS+=($!)
  local mock_url
  mock_url="$(address_in "$dir/mock.log")" || fail_with_logs "$dir" "the mock did not start"
  cat >"$dir/chatgate.toml" <<EOT
free_messages_per_day = 0
[limits]
ip_per_second = 0      # the browser test runs from one address
[wechat_pay]
mch_id = "1900000109"
app_id = "wxd678efh567hg6787"
api_v3_key = "a7cde1ZbH9sG3kLmN5pQ2rT8uV0wXy4F"
merchant_serial_no = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
merchant_private_key_path = "$dir/keys/apiclient_key.pem"
platform_public_key_path = "$dir/keys/wechatpay_pub.pem"
platform_serial_no = "PUB_KEY_ID_0114232134912410000000000000"
# WeChat Pay only posts to https; the mock posts to the gateway's own address instead.
notify_url = "https://pay.example.com/pay/wechat/notify"
[[recharge_packages]]
id = "p10"
title = "10 元"
price_fen = 1000
credit_micros = 10000000
[[recharge_packages]]
id = "p30"
title = "30 元（送 3 元）"
price_fen = 3000
credit_micros = 33000000
EOT
  echo "   gateway (demo model, two packages, [wechat_pay] → $mock_url)"
  (cd "$dir" && CHATGATE_CONFIG=chatgate.toml CHATGATE_LISTEN=127.0.0.1:0 \
    CHATGATE_WECHAT_PAY_API_BASE="$mock_url" CHATGATE_ADMIN_TOKEN="$ADMIN_TOKEN" \
    exec "$GATEWAY" >gateway.log 2>&1) &
  PIDS+=($!)
  local gw_url
  gw_url="$(address_in "$dir/gateway.log")" || fail_with_logs "$dir" "the gateway did not start"
  call POST "$mock_url/mock/config" "{\"notify_url\":\"$gw_url/pay/wechat/notify\"}" >/dev/null \
    || fail_with_logs "$dir" "could not set the mock's notify URL"

  echo "   browser test: H5 page at $gw_url buys package $buy by its QR code; the mock pays"
  local t0=$SECONDS
  if ! (cd "$ROOT/uniapp-client" && CHATGATE_URL="$gw_url" CHATGATE_PAY_MOCK_URL="$mock_url" \
        CHATGATE_PAY_PACKAGE="$buy" CHATGATE_SCREENSHOT="$dir/h5.png" CHROMIUM_PATH="$CHROMIUM" \
        node --test --test-reporter=spec tests-browser/pay.test.mjs) >"$dir/browser.log" 2>&1; then
    fail_with_logs "$dir" "$name: the browser test failed"
  fi
  local line
  line="$(grep -ao 'pay-e2e user_id=.*' "$dir/browser.log" | head -n1 || true)"
  [ -n "$line" ] || fail_with_logs "$dir" "$name: the browser test did not pay (skipped?)"
  grep -aE '^ℹ (pass|fail|skipped) ' "$dir/browser.log" | tr '\n' ' ' | sed 's/^/   /'
  echo "($((SECONDS - t0)) s)"
  local user_id order_id package credit before after
  user_id="$(sed -E 's/.*user_id=([0-9]+).*/\1/' <<<"$line")"
  order_id="$(sed -E 's/.*order_id=([0-9a-zA-Z]+).*/\1/' <<<"$line")"
  package="$(sed -E 's/.*package=([^ ]+).*/\1/' <<<"$line")"
  credit="$(sed -E 's/.*credit_micros=([0-9]+).*/\1/' <<<"$line")"
  before="$(sed -E 's/.*balance_before=([0-9]+).*/\1/' <<<"$line")"
  after="$(sed -E 's/.*balance_after=([0-9]+).*/\1/' <<<"$line")"
  [ "$package" = "$buy" ] || fail_with_logs "$dir" "$name: the browser test bought $package, not $buy"
  # The package's credit as the gateway lists it (not as the browser test says).
  [ "$(call GET "$gw_url/api/pay/packages" | field "j.packages.find((p) => p.id === '$buy').credit_micros")" = "$credit" ] \
    || fail_with_logs "$dir" "$name: package $buy does not credit $credit"

  # WeChat Pay keeps notifying: three more (late) copies at once change nothing.
  local late
  late="$(call POST "$mock_url/mock/pay" \
    "{\"out_trade_no\":\"$order_id\",\"notify_times\":3,\"concurrent\":true,\"lose\":false}")" \
    || fail_with_logs "$dir" "$name: the late notifications could not be sent"
  sleep 1

  # What the mock saw and sent for the order.
  local orders notified
  orders="$(call GET "$mock_url/mock/orders")"
  notified="$(field "j.orders.find((o) => o.out_trade_no === '$order_id').notifications.slice(0, -3).map((n) => n.status ?? n.error).join(' ')" <<<"$orders")"
  [ "$(field 'j.bad_signatures' <<<"$orders")" = "0" ] || fail_with_logs "$dir" "$name: the mock refused a signature: $orders"
  [ "$(field 'j.bad_requests.length' <<<"$orders")" = "0" ] || fail_with_logs "$dir" "$name: the mock refused requests: $orders"
  [ "$(field "j.orders.find((o) => o.out_trade_no === '$order_id').paid" <<<"$orders")" = "true" ] \
    || fail_with_logs "$dir" "$name: order $order_id is not paid at the mock"
  [ "$notified" = "$expected" ] || fail_with_logs "$dir" "$name: notifications answered '$notified', expected '$expected'"
  [ "$(field 'j.notifications.map((n) => n.status).join(" ")' <<<"$late")" = "204 204 204" ] \
    || fail_with_logs "$dir" "$name: late notifications were answered $late"

  # The admin's view: one pay credit of exactly the package's credit; the invariant holds.
  local user check balance pays pay_sum ledger_sum held
  user="$(call GET "$gw_url/admin/users/$user_id" "" "$ADMIN_TOKEN")"
  check="$(call GET "$gw_url/admin/check" "" "$ADMIN_TOKEN")"
  balance="$(field 'j.balance_micros' <<<"$user")"
  pays="$(field "j.ledger.filter((e) => e.kind === 'pay').length" <<<"$user")"
  pay_sum="$(field "j.ledger.filter((e) => e.kind === 'pay').reduce((s, e) => s + e.amount_micros, 0)" <<<"$user")"
  ledger_sum="$(field 'j.ledger_sum_micros' <<<"$user")"
  held="$(field 'j.held_micros' <<<"$user")"
  [ "$pays" = "1" ] || fail_with_logs "$dir" "$name: $pays pay credits in the ledger (expected 1): $user"
  [ "$pay_sum" = "$credit" ] || fail_with_logs "$dir" "$name: credited $pay_sum, the package credits $credit"
  [ "$(field "j.ledger.find((e) => e.kind === 'pay').reference" <<<"$user")" = "pay:$order_id" ] \
    || fail_with_logs "$dir" "$name: the pay credit is not for order $order_id: $user"
  [ "$((after - before))" = "$credit" ] || fail_with_logs "$dir" "$name: the page saw $before → $after, not +$credit"
  [ "$balance" = "$after" ] || fail_with_logs "$dir" "$name: balance $balance now, $after right after paying"
  [ "$((balance + held))" = "$ledger_sum" ] || fail_with_logs "$dir" "$name: balance $balance + held $held ≠ ledger $ledger_sum"
  [ "$(field 'j.ok' <<<"$check")" = "true" ] || fail_with_logs "$dir" "$name: GET /admin/check: $check"
  local summary
  summary="$name: package $package, balance $(yuan "$before") → $(yuan "$balance") (+$(yuan "$credit") = the package's credit), 1 pay credit (pay:$order_id), notifications [${notified:-none}] + 3 late, invariant ok ($(field 'j.users_checked' <<<"$check") users)"
  echo "   ok — $summary"
  RESULTS+=("$summary")
}

scenario "notified-3x-at-once" p10 "204 204 204" --notify-times 3 --notify-concurrent
scenario "notification-lost" p30 "" --lose-notifications

echo "== summary"
for r in "${RESULTS[@]}"; do echo "   $r"; done
echo "pay e2e: OK — 2 runs (3 notifications at once; lost → found by the order query), each credited exactly once"
