#!/usr/bin/env bash
# The official OpenAI SDKs (Python `openai`, npm `openai`) against a live chatgate gateway.
#
#   CHATGATE_URL=http://127.0.0.1:8080 CHATGATE_ADMIN_TOKEN=… CHATGATE_MOCK_ANSWER='…' tests/sdk/run.sh
#
# Environment:
#   CHATGATE_URL          gateway base URL; unset: print a skip message and exit 0
#   CHATGATE_ADMIN_TOKEN  admin token (credits the test user)
#   CHATGATE_MOCK_ANSWER  the exact text the upstream sends for every request (recommended)
#   CHATGATE_SDK_VENV     virtualenv to use/create (default: tests/sdk/python/.venv, git-ignored)
#   CHATGATE_SDK_UPSTREAM_ONLY=1  CHATGATE_URL is a bare OpenAI-compatible upstream (e.g. the
#                         repo's mock_upstream): run only the tests that need no account
#
# The gateway under test should serve `gpt-4o-mini` at a non-zero price, with
# free_messages_per_day = 0 and per-IP limits above the defaults (429s are retried anyway).
# Both suites create their own users and keys, so they can run against any gateway, repeatedly.
# Exit status: 0 when both suites pass, 1 when either fails, 2 on a setup error.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -z "${CHATGATE_URL:-}" ]]; then
  echo "sdk tests: SKIPPED (CHATGATE_URL is not set; point it at a running gateway to run them)"
  exit 0
fi
upstream_only=0
[[ -n "${CHATGATE_SDK_UPSTREAM_ONLY:-}" && "${CHATGATE_SDK_UPSTREAM_ONLY}" != 0 ]] && upstream_only=1
if [[ $upstream_only == 0 && -z "${CHATGATE_ADMIN_TOKEN:-}" ]]; then
  echo "sdk tests: CHATGATE_ADMIN_TOKEN is not set (needed to credit the test users)" >&2
  exit 2
fi
if [[ -z "${CHATGATE_MOCK_ANSWER+x}" ]]; then
  echo "sdk tests: note: CHATGATE_MOCK_ANSWER is not set; answers are only compared with each other"
fi
for tool in python3 node npm; do
  command -v "$tool" >/dev/null || { echo "sdk tests: $tool is not installed" >&2; exit 2; }
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
  echo "sdk tests: Node >= 20 is needed, found $(node --version)" >&2
  exit 2
fi

# Is the gateway up? (a bare upstream has no /healthz)
if [[ $upstream_only == 0 ]]; then
  if ! python3 - "${CHATGATE_URL%/}/healthz" <<'EOF'
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + 10
while True:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            sys.exit(0 if r.status == 200 else 1)
    except Exception as e:
        if time.monotonic() > deadline:
            print(f"sdk tests: {url} is not answering: {e}", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.5)
EOF
  then
    exit 2
  fi
fi

# --- Python: a virtualenv with the pinned requirements (rebuilt when they change) ----------------
venv="${CHATGATE_SDK_VENV:-$HERE/python/.venv}"
req="$HERE/python/requirements.txt"
if ! cmp -s "$req" "$venv/.chatgate-requirements.txt" 2>/dev/null; then
  echo "sdk tests: creating virtualenv $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || { echo "sdk tests: python3 -m venv failed" >&2; exit 2; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" ||
    { echo "sdk tests: pip install failed" >&2; exit 2; }
  cp "$req" "$venv/.chatgate-requirements.txt"
fi

# --- Node: exactly the locked packages ------------------------------------------------------------
(cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error) ||
  { echo "sdk tests: npm ci failed" >&2; exit 2; }

# --- Run both suites (both always run) -----------------------------------------------------------
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

echo "=== Python openai SDK (pytest) ==="
(cd "$HERE/python" && "$venv/bin/python" -m pytest -p no:cacheprovider -q -rs test_openai_sdk.py) 2>&1 |
  tee "$logs/py.log"
py_rc=${PIPESTATUS[0]}

echo "=== Node openai SDK (node:test) ==="
(cd "$HERE/node" && node --test --test-reporter=spec openai_sdk.test.mjs) 2>&1 | tee "$logs/node.log"
node_rc=${PIPESTATUS[0]}

py_summary="$(grep -E '[0-9]+ (passed|failed|skipped|error)' "$logs/py.log" | tail -n 1)"
node_summary="$(grep -E '^ℹ (pass|fail|skipped) [0-9]+' "$logs/node.log" | tr -d 'ℹ' | xargs)"
echo "=== summary ==="
echo "python (openai $(sed -n 's/^openai==//p' "$req")): ${py_summary:-no summary} (exit $py_rc)"
echo "node (openai $(node -p 'require(process.argv[1]).dependencies.openai' "$HERE/node/package.json" 2>/dev/null || true)): ${node_summary:-no summary} (exit $node_rc)"

if (( py_rc != 0 || node_rc != 0 )); then
  echo "sdk tests: FAILED"
  exit 1
fi
echo "sdk tests: OK"
