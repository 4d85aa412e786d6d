"""Load test of `POST /v1/chat/completions`: requests/s, p50/p95/p99 and errors at rising concurrency, then many
concurrent SSE streams.

`python bench/server_load.py [--users 10,50,100] [--duration 20] [--stream-users 500] [--json FILE]` starts the
bench server (`server_app.py`, its own process, fresh SQLite data dir, an API key made through the store, limits
off) on 127.0.0.1 and drives it with locust (`locustfile.py`), headless, in a subprocess of its own per step:

1. `ChatUser` steps: non-streamed requests, each user sending the next as soon as the last is answered (closed
   loop), so the user count is the concurrency;
2. the stream step: `--stream-users` `StreamUser`s, each reading a whole `stream: true` answer to `[DONE]`; the
   `bench` agent streams `--stream-words` words `--stream-interval-ms` apart, so each stream stays open about
   words x interval (5 s by default) and the streams overlap: at 500 users, about 500 are open at any moment
   (the in-flight column is requests/s x mean duration, Little's law).

The answer of every request is checked (the locustfile marks a wrong body, a missing `[DONE]` or an error event
as a failure). Percentiles are locust's (it rounds response times above 100 ms to 2 significant digits). Exits
non-zero if any request failed. `--smoke` is the short run that `tests/server/test_load_smoke.py` does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _server_bench import Step, machine, markdown_table, rss_bytes, run_locust, server_process


def _steps_table(steps: list[Step]) -> str:
    rows = []
    for s in steps:
        in_flight = s.rps * s.mean_ms / 1000
        rows.append(
            [
                "streams" if s.name == "StreamUser" else "JSON",
                s.users,
                f"{s.duration_s:g}",
                f"{s.requests:,}",
                f"{s.rps:,.0f}",
                f"{s.p50_ms:,.0f}",
                f"{s.p95_ms:,.0f}",
                f"{s.p99_ms:,.0f}",
                f"{s.max_ms:,.0f}",
                f"{in_flight:,.0f}",
                s.failures,
            ]
        )
    return markdown_table(
        ["requests", "users", "s", "done", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "in flight", "errors"],
        rows,
    )


def main() -> None:
    """Run the steps, print the table, write JSON if asked; exit 1 on any failed request."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", default="10,50,100", help="concurrency of the JSON steps, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per JSON step")
    parser.add_argument("--stream-users", type=int, default=500, help="concurrent SSE streams (0: no stream step)")
    parser.add_argument("--stream-duration", type=float, default=30.0, help="seconds measured in the stream step")
    parser.add_argument("--stream-spawn-rate", type=float, default=100.0, help="stream users started per second")
    parser.add_argument("--stream-words", type=int, default=20, help="words per streamed answer")
    parser.add_argument("--stream-interval-ms", type=float, default=250.0, help="pause before each streamed word")
    parser.add_argument("--smoke", action="store_true", help="the CI smoke: 20 users x 10 s JSON, 20 streams x 5 s")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.smoke:
        args.users, args.duration = "20", 10.0
        args.stream_users, args.stream_duration, args.stream_spawn_rate = 20, 5.0, 20.0
        args.stream_words, args.stream_interval_ms = 5, 20.0
    users = [int(u) for u in args.users.split(",") if u.strip()]
    if any(u <= 0 for u in users) or args.duration <= 0 or args.stream_users < 0:
        parser.error("--users must be positive integers, --duration positive, --stream-users at least 0")

    print(f"machine: {machine()}", flush=True)
    steps: list[Step] = []
    started = time.monotonic()
    with server_process(stream_words=args.stream_words, stream_interval_ms=args.stream_interval_ms) as server:
        rss_start = rss_bytes(server.pid)
        for count in users:
            step = run_locust(server, "ChatUser", users=count, duration_s=args.duration)
            steps.append(step)
            print(f"  JSON x{count}: {step.rps:,.0f} req/s, p50 {step.p50_ms:g} ms, {step.failures} errors", flush=True)
        if args.stream_users:
            step = run_locust(
                server,
                "StreamUser",
                users=args.stream_users,
                duration_s=args.stream_duration,
                spawn_rate=args.stream_spawn_rate,
            )
            steps.append(step)
            print(f"  streams x{args.stream_users}: {step.rps:,.0f}/s, {step.failures} errors", flush=True)
        rss_end = rss_bytes(server.pid)
    pace_ms = args.stream_words * args.stream_interval_ms
    print()
    print(_steps_table(steps))
    print(
        f"\nStreams are paced at {args.stream_words} words x {args.stream_interval_ms:g} ms = {pace_ms:g} ms; "
        f"server RSS {rss_start / 2**20:.0f} MiB at start, {rss_end / 2**20:.0f} MiB at the end; "
        f"{time.monotonic() - started:.0f} s in all."
    )
    errors = [e for s in steps for e in s.errors]
    for line in errors[:20]:
        print(f"  error: {line}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "steps": [s.as_dict() for s in steps],
                    "stream_pace_ms": pace_ms,
                    "rss_start_bytes": rss_start,
                    "rss_end_bytes": rss_end,
                },
                indent=2,
            )
        )
    failed = sum(s.failures for s in steps) or sum(1 for s in steps if s.requests == 0 or s.exit_code not in (0, 1))
    sys.exit(1 if failed or errors else 0)


if __name__ == "__main__":
    main()
