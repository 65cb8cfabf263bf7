#!/usr/bin/env bash
# The streaming benchmark of issue #9, in one command:
#
#   bench/run.sh            full run (~10 min): C = 1, 50, 500, 2000 × delay 0 / 20 ms,
#                           PostgreSQL rows, the per-answer rows, then 10,000 open
#                           streams for 30 s
#   bench/run.sh --per-answer-only     only the per-answer rows (below)
#   bench/run.sh --quick    sanity check (~2 min): C = 1, 50, short windows, no 10k run
#   bench/run.sh --open-streams-only   only the 10,000-stream run
#   bench/run.sh --repeat N             every measured row N times (the rows of one C
#                           alternate: direct, nginx, chatgate…, then again), and the table
#                           shows each figure's median, with the range of "x nginx"
#
# Builds release once; installs nginx-light and wrk from Debian if missing; starts two mock
# upstreams (examples/mock_upstream: chunk delay 0 and 20 ms), nginx as a pure streaming
# proxy in front of each (proxy_buffering off, HTTP/1.1 keep-alive upstream), and chatgate
# (a fresh instance and SQLite file per measured row, so idle RSS is a fresh process's),
# then runs the same load (examples/loadgen) against: the mock directly, nginx→mock,
# chatgate mini-program framing and SSE (HTTP/2 to the mock, which speaks h2c), chatgate
# mini-program framing with HTTP/1.1 to the mock (one connection per open answer, as
# nginx) — and chatgate on PostgreSQL for two rows. At C = 1, delay 0, direct and SSE run
# once more with a 50 ms pause between requests (the mini-program framing's own pause).
# The per-answer rows (delay 0, C = 50) ask a third mock that answers with ONE piece: CPU
# per chunk there is CPU per answer, what a request costs each proxy apart from relaying
# pieces (chatgate: auth, hold, settlement, storing the answer; nginx: proxying a request).
# CPU is utime+stime from /proc over the measured window / content pieces delivered in it;
# RSS per stream = (median RSS during the window − RSS before the load) / C.
# Prints one markdown table. Raw JSON lines are kept in $WORK/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=full
REPEAT=${REPEAT:-1}
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --open-streams-only) MODE=open ;;
        --per-answer-only) MODE=per-answer ;;
        --repeat)
            [ $# -ge 2 ] || { echo "--repeat needs a number of runs" >&2; exit 2; }
            REPEAT=$2
            shift
            ;;
        -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if ! [[ "$REPEAT" =~ ^[1-9][0-9]*$ ]]; then
    echo "--repeat needs a whole number of runs (1 or more), not '$REPEAT'" >&2
    exit 2
fi

CHUNKS=${CHUNKS:-100}          # content pieces per answer
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
if [ "$MODE" = quick ]; then
    CONCURRENCY=(1 50)
    WINDOW=3 WARMUP=1
else
    CONCURRENCY=(1 50 500 2000)
    WINDOW=8 WARMUP=2
fi

# 10,000 streams through chatgate need ~10,000 descriptors in it, and as many in the
# loadgen.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== building (release)" >&2
cargo build --release --bins --examples 2>&1 | tail -n 2 >&2
BIN=$ROOT/target/release
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    echo "== installing nginx-light and wrk" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y nginx-light wrk >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y nginx-light wrk >/dev/null; }
fi
NGINX=$(command -v nginx)

WORK=$(mktemp -d /tmp/chatgate-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${PG_DB:-}" ]; then
        psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

MOCK0=127.0.0.1:19100 MOCK20=127.0.0.1:19101 MOCK1=127.0.0.1:19103
NGINX0=127.0.0.1:19180 NGINX20=127.0.0.1:19181 NGINX1=127.0.0.1:19183
GATE=127.0.0.1:19200
ADMIN=bench-admin

wait_for_log() { # file pattern
    for _ in $(seq 1 300); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1:" >&2
    tail -n 20 "$1" >&2
    exit 1
}

start_mock() { # addr delay_ms first_token_delay_ms name
    "$BIN/examples/mock_upstream" --listen "$1" --chunks "$CHUNKS" --chunk-delay-ms "$2" \
        --first-token-delay-ms "$3" >"$WORK/$4.log" 2>&1 &
    PIDS+=($!)
    eval "$4_PID=$!"
    wait_for_log "$WORK/$4.log" "listening on"
}

start_nginx() {
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 2;
worker_rlimit_nofile 100000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 40000; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    keepalive_requests 10000000;
    upstream mock0  { server $MOCK0;  keepalive 4096; keepalive_requests 10000000; }
    upstream mock20 { server $MOCK20; keepalive 4096; keepalive_requests 10000000; }
    upstream mock1  { server $MOCK1;  keepalive 4096; keepalive_requests 10000000; }
    server {
        listen $NGINX0 backlog=4096;
        location / {
            proxy_pass http://mock0;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }
    }
    server {
        listen $NGINX20 backlog=4096;
        location / {
            proxy_pass http://mock20;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }
    }
    server {
        listen $NGINX1 backlog=4096;
        location / {
            proxy_pass http://mock1;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }
    }
}
EOF
    "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' \
        >"$WORK/nginx/out.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    for _ in $(seq 1 50); do
        NGINX_WORKERS=$( (pgrep -P "$NGINX_PID" || true) | paste -sd, -)
        [ -n "$NGINX_WORKERS" ] && [ "$(echo "$NGINX_WORKERS" | tr , '\n' | wc -l)" -ge 2 ] && return 0
        sleep 0.1
    done
    echo "nginx did not start:" >&2
    cat "$WORK/nginx/error.log" "$WORK/nginx/out.log" >&2
    exit 1
}

# chatgate, fresh: every limit that would refuse the benchmark's load is switched off
# here, explicitly: one client IP sends everything, 50 users carry up to 10,000 streams.
GATE_N=0
start_gate() { # database_url [address of the "slow" model's upstream] [http2: true|false]
    local slow=${2:-$MOCK20} http2=${3:-true}
    GATE_N=$((GATE_N + 1))
    local conf=$WORK/chatgate-$GATE_N.toml
    cat >"$conf" <<EOF
listen = "$GATE"
database_url = "$1"
admin_token = "$ADMIN"
jwt_secret = "bench-secret"
free_messages_per_day = 0          # every answer takes a money hold and is settled
default_model = "fast"
[limits]
ip_per_second = 0                  # off: the load generator is one IP
user_chats_per_minute = 0          # off
user_concurrent_streams = 0        # off: 50 users carry up to 10,000 streams
upstream_concurrent_streams = 0    # off (default 512 would refuse C >= 512)
max_connections = 30000
# The mock speaks HTTP/2 without TLS, as providers do over TLS: answers share one
# upstream connection (http2 = false: one connection per open answer, as nginx does).
[[channels]]
name = "fast"
base_url = "http://$MOCK0/v1"
models = ["fast"]
http2 = $http2
[[channels]]
name = "slow"
base_url = "http://$slow/v1"
models = ["slow"]
http2 = $http2
[models.fast]
input_micros_per_million = 150000
output_micros_per_million = 600000
max_output_tokens = 1024
[models.slow]
input_micros_per_million = 150000
output_micros_per_million = 600000
max_output_tokens = 1024
EOF
    "$BIN/chatgate" --config "$conf" >"$WORK/chatgate-$GATE_N.log" 2>&1 &
    GATE_PID=$!
    wait_for_log "$WORK/chatgate-$GATE_N.log" "listening on"
}

stop_gate() {
    kill "$GATE_PID" 2>/dev/null || true
    wait "$GATE_PID" 2>/dev/null || true
}

loadgen() { # label target url model C [extra args]
    local label=$1 target=$2 url=$3 model=$4 c=$5
    shift 5
    "$BIN/examples/loadgen" --target "$target" --url "$url" --model "$model" -c "$c" \
        --duration "$WINDOW" --warmup "$WARMUP" --admin-token "$ADMIN" --label "$label" \
        --json "$@" >"$WORK/$label.out" 2>&1 || {
        echo "loadgen failed for $label:" >&2
        cat "$WORK/$label.out" >&2
        return 1
    }
    head -n -1 "$WORK/$label.out" >&2
    tail -n 1 "$WORK/$label.out" >>"$RESULTS"
}

run_rows() {
    for delay in 0 20; do
        if [ "$delay" = 0 ]; then
            mock=$MOCK0 nginx=$NGINX0 model=fast mockpid=$mock0_PID
        else
            mock=$MOCK20 nginx=$NGINX20 model=slow mockpid=$mock20_PID
        fi
        for c in "${CONCURRENCY[@]}"; do
          for round in $(seq 1 "$REPEAT"); do
            echo "== delay ${delay} ms, C = $c (run $round of $REPEAT)" >&2
            loadgen "d$delay-c$c-direct" openai "http://$mock/v1" mock-model "$c" \
                --watch "mock=$mockpid"
            loadgen "d$delay-c$c-nginx" openai "http://$nginx/v1" mock-model "$c" \
                --watch "nginx=$NGINX_WORKERS" --watch "mock=$mockpid"
            if [ "$delay" = 0 ] && [ "$c" = 1 ]; then
                # The mini-program framing pauses 50 ms before its terminal frame, so
                # at C = 1 each of its requests starts after 50 ms of idle: the same
                # pause for direct and SSE shows what that idle costs by itself.
                loadgen "d0-c1-direct-pause" openai "http://$mock/v1" mock-model 1 \
                    --pause-ms 50 --watch "mock=$mockpid"
                start_gate "sqlite://$WORK/gate-$GATE_N.db?mode=rwc" "$MOCK20" true
                loadgen "d0-c1-sse-pause" sse "http://$GATE" "$model" 1 --pause-ms 50 \
                    --watch "chatgate=$GATE_PID" --watch "mock=$mockpid"
                stop_gate
            fi
            for framing in mp sse mp-h1; do
                local http2=true
                [ "$framing" = mp-h1 ] && http2=false
                start_gate "sqlite://$WORK/gate-$GATE_N.db?mode=rwc" "$MOCK20" "$http2"
                loadgen "d$delay-c$c-$framing" "${framing%-h1}" "http://$GATE" "$model" "$c" \
                    --watch "chatgate=$GATE_PID" --watch "mock=$mockpid"
                stop_gate
            done
          done
        done
    done
}

run_postgres() {
    if ! psql "$PG_ADMIN_URL" -qc "select 1" >/dev/null 2>&1; then
        echo "== PostgreSQL not reachable at $PG_ADMIN_URL: skipped" >&2
        return 0
    fi
    for spec in "0 50 fast" "20 500 slow"; do
      for _ in $(seq 1 "$REPEAT"); do
        read -r delay c model <<<"$spec"
        [ "$MODE" = quick ] && c=50
        local mockpid=$mock0_PID
        [ "$delay" = 20 ] && mockpid=$mock20_PID
        PG_DB=cgbench_$(date +%s%N)
        psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
        echo "== PostgreSQL: delay ${delay} ms, C = $c" >&2
        start_gate "${PG_ADMIN_URL%/*}/$PG_DB"
        loadgen "d$delay-c$c-mp-pg" mp "http://$GATE" "$model" "$c" \
            --watch "chatgate=$GATE_PID" --watch "mock=$mockpid"
        stop_gate
        psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true
        PG_DB=
      done
    done
}

# Delay 0, C = 50, answers of one piece: direct, nginx, chatgate SSE and mp (the rows of a
# run interleaved as in run_rows; nginx proxies to this mock on a port of its own).
run_per_answer() {
    for round in $(seq 1 "$REPEAT"); do
        echo "== per answer: one piece per answer, delay 0, C = 50 (run $round of $REPEAT)" >&2
        loadgen "d0-c50-direct-1piece" openai "http://$MOCK1/v1" mock-model 50 \
            --watch "mock=$mock1_PID"
        loadgen "d0-c50-nginx-1piece" openai "http://$NGINX1/v1" mock-model 50 \
            --watch "nginx=$NGINX_WORKERS" --watch "mock=$mock1_PID"
        for framing in sse mp; do
            start_gate "sqlite://$WORK/gate-$GATE_N.db?mode=rwc" "$MOCK1" true
            loadgen "d0-c50-$framing-1piece" "$framing" "http://$GATE" slow 50 \
                --watch "chatgate=$GATE_PID" --watch "mock=$mock1_PID"
            stop_gate
        done
    done
}

run_open_streams() {
    # 10,000 streams, one piece every 500 ms, 80 pieces: each stream lives ~40 s; the
    # window (30 s) opens once every stream has started (5 s ramp + 1 s) and closes
    # before the first one ends.
    local streams=${OPEN_STREAMS:-10000}
    # chatgate holds one descriptor per stream (the client's; the upstream connection is
    # shared over HTTP/2), the loadgen one per stream.
    local fit=$(($(ulimit -n) - 200))
    if [ "$streams" -gt "$fit" ]; then
        echo "!! open-file limit $(ulimit -n) (hard $(ulimit -Hn)) cannot be raised here:" \
            "$fit streams are run instead of $streams" >&2
        streams=$fit
    fi
    CHUNKS=80 start_mock 127.0.0.1:19102 500 500 open
    start_gate "sqlite://$WORK/gate-open.db?mode=rwc" 127.0.0.1:19102
    echo "== open streams: $streams through chatgate (mp), one piece every 500 ms" >&2
    "$BIN/examples/loadgen" --target mp --url "http://$GATE" --model slow -c "$streams" \
        --duration 30 --warmup 1 --ramp-ms 5000 --requests "$streams" --admin-token "$ADMIN" \
        --label "open-$streams" --all-latencies --watch "chatgate=$GATE_PID" --watch "mock=$open_PID" \
        --json >"$WORK/open.out" 2>&1 || { cat "$WORK/open.out" >&2; return 1; }
    head -n -1 "$WORK/open.out" >&2
    tail -n 1 "$WORK/open.out" >>"$RESULTS"
    stop_gate
}

STARTED=$(date +%s)
if [ "$MODE" != open ]; then
    start_mock "$MOCK0" 0 0 mock0
    start_mock "$MOCK20" 20 0 mock20
    CHUNKS=1 start_mock "$MOCK1" 0 0 mock1
    start_nginx
    if [ "$MODE" != per-answer ]; then
        run_rows
        run_postgres
    fi
    if [ "$MODE" != quick ]; then
        run_per_answer
    fi
fi
if [ "$MODE" = full ] || [ "$MODE" = open ]; then
    run_open_streams
fi

echo "== done in $(($(date +%s) - STARTED)) s; raw results: $RESULTS" >&2
python3 "$ROOT/bench/table.py" "$RESULTS" "$CHUNKS"
