"""Bounded soak: the server's resident memory (RSS) after 1k and after 20k requests.

`python bench/server_soak.py [--requests 20000] [--concurrency 16] [--json FILE]` starts the bench server
(`server_app.py`, its own process, fresh SQLite data dir, limits off) and sends it exactly `--requests` requests
with an asyncio `httpx` client, `--concurrency` at a time, in a fixed mix (out of every 20):

- 15 non-streamed `POST /v1/chat/completions` to the `bench` agent (answer checked);
- 4 `stream: true` ones to `bench-stream` (5 words), read to `[DONE]`;
- 1 error: a wrong API key (401) or an unknown agent (404), alternately; the status is checked.

It reads the server's RSS (psutil, else `/proc/<pid>/status`) after a 200-request warm-up and at every
checkpoint (1k, 2k, 5k, 10k, 15k, 20k by default), and reports the growth between 1k and the end per 1k requests.
A leak of even a few hundred bytes per request shows as a steady climb; a heap that settles stays flat. Exits
non-zero if any request got an unexpected answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from _server_bench import Server, machine, markdown_table, rss_bytes, server_process

PROMPT = "What is the weather in Paris?"


@dataclass
class Tally:
    """Requests sent, and the unexpected answers (first few kept)."""

    sent: int = 0
    bad: int = 0
    examples: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        """Count an unexpected answer."""
        self.bad += 1
        if len(self.examples) < 10:
            self.examples.append(what)


async def one(client: httpx.AsyncClient, server: Server, i: int, tally: Tally) -> None:
    """Request number `i` of the mix; checks its answer."""
    auth = {"Authorization": f"Bearer {server.key}"}
    body: dict[str, object] = {"model": "bench", "messages": [{"role": "user", "content": f"{PROMPT} #{i}"}]}
    kind = i % 20
    try:
        if kind == 19:
            wrong_key = (i // 20) % 2 == 0
            headers = {"Authorization": "Bearer mk_000000000000_" + "x" * 43} if wrong_key else auth
            if not wrong_key:
                body["model"] = "no-such-agent"
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
            expected = 401 if wrong_key else 404
            if response.status_code != expected or "error" not in response.json():
                tally.fail(f"#{i}: expected {expected}, got {response.status_code} {response.text[:120]}")
        elif kind >= 15:
            body["stream"], body["model"] = True, "bench-stream"
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth) as response:
                text = (await response.aread()).decode()
            if response.status_code != 200 or "data: [DONE]" not in text or '"error"' in text:
                tally.fail(f"#{i}: stream {response.status_code} {text[-160:]!r}")
        else:
            response = await client.post("/v1/chat/completions", json=body, headers=auth)
            if response.status_code != 200 or f"#{i}" not in response.json()["choices"][0]["message"]["content"]:
                tally.fail(f"#{i}: {response.status_code} {response.text[:160]}")
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        tally.fail(f"#{i}: {exc!r}")
    tally.sent += 1


async def drive(server: Server, start: int, count: int, concurrency: int, tally: Tally) -> None:
    """Send requests `start` .. `start + count - 1`, `concurrency` at a time."""
    queue = iter(range(start, start + count))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for i in queue:
                await one(client, server, i, tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    """Warm up, send the requests in chunks up to each checkpoint, print RSS per checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000, help="requests in all (after the warm-up)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    parser.add_argument("--checkpoints", default="1000,2000,5000,10000,15000,20000", help="read RSS after these")
    parser.add_argument("--warmup", type=int, default=200, help="requests before the baseline RSS")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.requests <= 0 or args.concurrency <= 0 or args.warmup < 0:
        parser.error("--requests and --concurrency must be positive, --warmup at least 0")
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if c.strip() and int(c) < args.requests})
    checkpoints.append(args.requests)

    print(f"machine: {machine()}", flush=True)
    tally = Tally()
    rows: list[tuple[int, int, float]] = []
    with server_process(stream_words=5) as server:
        started = time.monotonic()
        asyncio.run(drive(server, -args.warmup, args.warmup, args.concurrency, tally))
        rows.append((0, rss_bytes(server.pid), 0.0))
        done = 0
        for point in checkpoints:
            asyncio.run(drive(server, done, point - done, args.concurrency, tally))
            done = point
            rows.append((done, rss_bytes(server.pid), time.monotonic() - started))
            print(f"  {done:>6,} requests: RSS {rows[-1][1] / 2**20:.1f} MiB", flush=True)
    base = next((rss for n, rss, _ in rows if n == 1000), rows[1][1])
    end_n, end_rss, elapsed = rows[-1]
    per_k = (end_rss - base) / max((end_n - 1000) / 1000, 1e-9) if end_n > 1000 else 0.0
    print()
    print(
        markdown_table(
            ["requests", "RSS MiB", "vs warm-up", "elapsed s"],
            [[f"{n:,}", f"{rss / 2**20:.1f}", f"{(rss - rows[0][1]) / 2**20:+.1f}", f"{t:.0f}"] for n, rss, t in rows],
        )
    )
    print(
        f"\n{tally.sent:,} requests ({args.warmup} warm-up) in {elapsed:.0f} s, {tally.bad} unexpected; "
        f"RSS growth from 1k to {end_n:,}: {(end_rss - base) / 2**20:+.1f} MiB "
        f"({per_k / 1024:+.1f} KiB per 1k requests)"
    )
    for line in tally.examples:
        print(f"  unexpected: {line}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "requests": tally.sent,
                    "unexpected": tally.bad,
                    "rss": [{"requests": n, "rss_bytes": rss, "elapsed_s": t} for n, rss, t in rows],
                    "growth_bytes_per_1k": per_k,
                },
                indent=2,
            )
        )
    sys.exit(1 if tally.bad else 0)


if __name__ == "__main__":
    main()
