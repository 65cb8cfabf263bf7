"""Turns the loadgen JSON lines of bench/run.sh into one markdown table.

Usage: python3 bench/table.py results.jsonl CHUNKS_PER_ANSWER
"""

import json
import sys


def main():
    path, chunks = sys.argv[1], sys.argv[2]
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by_label = {r["label"]: r for r in rows}

    def proc(r, name):
        return next((p for p in r["procs"] if p["name"] == name), None)

    print()
    print(
        f"Chunks per answer: {chunks}. CPU = utime+stime of the proxy process over the "
        "measured window / content pieces delivered in it; x nginx = that ratio to nginx's "
        "in the same row group; RSS/stream = (median RSS during the window - RSS before "
        "the load, after the users were set up) / C, shown from C = 500 on."
    )
    print()
    print(
        "| delay | C | path | chunks/s | % of direct | TTFC p50 ms | added TTFC p50 ms "
        "| total p99 ms | CPU µs/chunk | x nginx | mock µs/chunk | RSS KB/stream "
        "| errors | wrong |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        label = r["label"]
        if label.startswith("open-"):
            continue
        delay, c, kind = label.split("-", 2)
        # Rows with a pause between requests compare with direct under the same pause.
        pause = "-pause" if kind.endswith("-pause") else ""
        direct = by_label.get(f"{delay}-{c}-direct{pause}")
        nginx = by_label.get(f"{delay}-{c}-nginx")
        name = {"direct": "mock", "direct-pause": "mock", "nginx": "nginx"}.get(
            kind, "chatgate"
        )
        p = proc(r, name)
        mock = proc(r, "mock")
        nginx_cpu = proc(nginx, "nginx")["cpu_us_per_chunk"] if nginx else None
        share = 100 * r["chunks_per_sec"] / direct["chunks_per_sec"] if direct else None
        added = r["ttfc_p50_ms"] - direct["ttfc_p50_ms"] if direct else None
        ratio = (
            p["cpu_us_per_chunk"] / nginx_cpu
            if nginx_cpu and not kind.startswith("direct") and not pause
            else None
        )
        path_name = {
            "direct": "direct (mock)",
            "nginx": "nginx → mock",
            "mp": "chatgate mp",
            "sse": "chatgate SSE",
            "mp-h1": "chatgate mp, HTTP/1.1 upstream",
            "mp-pg": "chatgate mp (PostgreSQL)",
            "direct-pause": "direct (mock), 50 ms pause between requests",
            "sse-pause": "chatgate SSE, 50 ms pause between requests",
        }.get(kind, kind)
        # Below a few hundred streams, fixed memory (pools, caches) swamps the per-stream part.
        small = int(c[1:]) < 500
        rss = "–" if kind.startswith("direct") or small else f"{p['rss_per_stream_kb']:.1f}"
        print(
            f"| {delay[1:]} ms | {c[1:]} | {path_name} | {r['chunks_per_sec']:.0f} "
            f"| {fmt(share, '.1f', '%')} | {r['ttfc_p50_ms']:.2f} | {fmt(added, '+.2f')} "
            f"| {r['total_p99_ms']:.1f} | {p['cpu_us_per_chunk']:.2f} | {fmt(ratio, '.2f', '×')} "
            f"| {mock['cpu_us_per_chunk']:.2f} | {rss} | {r['errors']} | {r['wrong']} |"
        )
    for r in rows:
        if not r["label"].startswith("open-"):
            continue
        p = proc(r, "chatgate")
        mock = proc(r, "mock")
        print(
            f"| 500 ms | {r['concurrency']} (open streams, {r['window_s']:.0f} s) | chatgate mp "
            f"| {r['chunks_per_sec']:.0f} | – | {r['ttfc_p50_ms']:.2f} | – "
            f"| {r['total_p99_ms']:.1f} | {p['cpu_us_per_chunk']:.2f} | – "
            f"| {mock['cpu_us_per_chunk']:.2f} | {p['rss_per_stream_kb']:.1f} "
            f"| {r['errors']} | {r['wrong']} |"
        )


def fmt(v, spec, suffix=""):
    return "–" if v is None else f"{v:{spec}}{suffix}"


if __name__ == "__main__":
    main()
