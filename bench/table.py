"""Turns the loadgen JSON lines of bench/run.sh into one markdown table.

Usage: python3 bench/table.py results.jsonl CHUNKS_PER_ANSWER

A row measured several times (bench/run.sh --repeat N) shows the median of each figure;
the comparisons with direct and nginx are made run by run (the k-th run of a row against
the k-th run of direct and of nginx at the same C, measured next to it) and their median
shown, with the range of "x nginx" beside it. Errors and wrong answers are summed.
"""

import json
import statistics
import sys


def proc(r, name):
    return next((p for p in r["procs"] if p["name"] == name), None)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec, suffix=""):
    return "–" if v is None else f"{v:{spec}}{suffix}"


def main():
    path, chunks = sys.argv[1], sys.argv[2]
    records = [json.loads(line) for line in open(path) if line.strip()]
    runs = {}
    for r in records:
        runs.setdefault(r["label"], []).append(r)
    repeats = max(len(v) for v in runs.values()) if runs else 0

    print()
    print(
        f"Chunks per answer: {chunks} (1 in the rows marked 'one piece per answer'). "
        "CPU = utime+stime of the proxy process over the "
        "measured window / content pieces delivered in it; x nginx = that ratio to nginx's "
        "in the same row group; RSS/stream = (median RSS during the window - RSS before "
        "the load, after the users were set up) / C, shown from C = 500 on."
        + (
            f" Each row: the median of {repeats} runs (x nginx: median, and in parentheses "
            "the lowest and highest of the runs); errors and wrong answers summed."
            if repeats > 1
            else ""
        )
    )
    print()
    print(
        "| delay | C | path | chunks/s | % of direct | TTFC p50 ms | added TTFC p50 ms "
        "| total p99 ms | CPU µs/chunk | x nginx | mock µs/chunk | RSS KB/stream "
        "| errors | wrong |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, rs in runs.items():
        if label.startswith("open-"):
            continue
        delay, c, kind = label.split("-", 2)
        # Rows with a pause between requests compare with direct under the same pause (and
        # not with nginx); rows of one piece per answer with direct and nginx of one piece.
        variant = next((v for v in ("-pause", "-1piece") if kind.endswith(v)), "")
        pause = variant == "-pause"
        base = kind.removesuffix(variant)
        directs = runs.get(f"{delay}-{c}-direct{variant}", [])
        nginxes = runs.get(f"{delay}-{c}-nginx{variant if not pause else ''}", [])
        name = {"direct": "mock", "nginx": "nginx"}.get(base, "chatgate")
        shares, addeds, ratios = [], [], []
        for k, r in enumerate(rs):
            direct = directs[k] if k < len(directs) else None
            nginx = nginxes[k] if k < len(nginxes) else None
            if direct:
                shares.append(100 * r["chunks_per_sec"] / direct["chunks_per_sec"])
                addeds.append(r["ttfc_p50_ms"] - direct["ttfc_p50_ms"])
            nginx_cpu = proc(nginx, "nginx")["cpu_us_per_chunk"] if nginx else None
            if nginx_cpu and base != "direct" and not pause:
                ratios.append(proc(r, name)["cpu_us_per_chunk"] / nginx_cpu)
        ratio = median(ratios)
        ratio_text = fmt(ratio, ".2f", "×")
        if len(ratios) > 1 and base != "nginx":
            ratio_text += f" ({min(ratios):.2f}–{max(ratios):.2f})"
        path_name = {
            "direct": "direct (mock)",
            "nginx": "nginx → mock",
            "mp": "chatgate mp",
            "sse": "chatgate SSE",
            "mp-h1": "chatgate mp, HTTP/1.1 upstream",
            "mp-pg": "chatgate mp (PostgreSQL)",
        }.get(base, base) + {
            "-pause": ", 50 ms pause between requests",
            "-1piece": ", one piece per answer (CPU per chunk = per answer)",
        }.get(variant, "")
        # Below a few hundred streams, fixed memory (pools, caches) swamps the per-stream part.
        small = int(c[1:]) < 500
        rss = median(proc(r, name)["rss_per_stream_kb"] for r in rs)
        rss_text = "–" if base == "direct" or small else f"{rss:.1f}"
        print(
            f"| {delay[1:]} ms | {c[1:]} | {path_name} "
            f"| {median(r['chunks_per_sec'] for r in rs):.0f} "
            f"| {fmt(median(shares), '.1f', '%')} "
            f"| {median(r['ttfc_p50_ms'] for r in rs):.2f} | {fmt(median(addeds), '+.2f')} "
            f"| {median(r['total_p99_ms'] for r in rs):.1f} "
            f"| {median(proc(r, name)['cpu_us_per_chunk'] for r in rs):.2f} | {ratio_text} "
            f"| {median(proc(r, 'mock')['cpu_us_per_chunk'] for r in rs):.2f} | {rss_text} "
            f"| {sum(r['errors'] for r in rs)} | {sum(r['wrong'] for r in rs)} |"
        )
    for label, rs in runs.items():
        if not label.startswith("open-"):
            continue
        for r in rs:
            p = proc(r, "chatgate")
            mock = proc(r, "mock")
            print(
                f"| 500 ms | {r['concurrency']} (open streams, {r['window_s']:.0f} s) "
                f"| chatgate mp | {r['chunks_per_sec']:.0f} | – | {r['ttfc_p50_ms']:.2f} | – "
                f"| {r['total_p99_ms']:.1f} | {p['cpu_us_per_chunk']:.2f} | – "
                f"| {mock['cpu_us_per_chunk']:.2f} | {p['rss_per_stream_kb']:.1f} "
                f"| {r['errors']} | {r['wrong']} |"
            )


if __name__ == "__main__":
    main()
