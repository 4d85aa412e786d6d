"""The server's added latency per request: over calling the agent in-process, and side by side with LiteLLM's proxy.

`python bench/server_latency.py [--litellm PATH] [--rounds 8] [--block 100] [--json FILE]`. Everything runs on
127.0.0.1, one request at a time (wall time of each, from this client), in interleaved blocks (each round runs
every target's block, the order rotating), so that drift on the machine hits every target alike:

1. **vs in-process.** The same `bench` agent (a `FunctionModel` answering at once; `server_app.bench_agents`):
   `await agent.run(prompt)` in this process, against `POST /v1/chat/completions` (`model: bench`) to the bench
   server (`server_app.py`, its own process). The difference is what serving it costs: HTTP client, loopback,
   uvicorn, FastAPI, auth, the OpenAI mapping.
2. **vs LiteLLM.** An OpenAI-compatible upstream (`stub_providers.py`, model `stub-text`: a fixed 125-character
   answer) reached three ways with the same client: directly; through miniagent's server (the `proxy` agent,
   an `OpenAIChatModel` on the stub); through LiteLLM's proxy (`litellm --config`, the stub as an `openai/`
   model, a master key). Added latency = through a proxy minus direct, at p50 and p95.

LiteLLM runs from its own venv (`make bench-litellm` builds `.venv-litellm` from
`bench/requirements-litellm.txt`); without it, part 2 has miniagent only. Both proxies run one worker process.
`--throughput-users N` (default 50; 0 skips it) also runs locust against both proxies for `--throughput-duration`
seconds: requests/s and p50/p95/p99 at N concurrent clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _server_bench import (
    BENCH,
    Server,
    Step,
    machine,
    markdown_table,
    quantiles_ms,
    run_locust,
    server_process,
    stop,
)

ROOT = BENCH.parent
PROMPT = "What is the weather in Paris?"
UPSTREAM_MODEL = "stub-text"
UPSTREAM_TEXT = "In Paris it is sunny and 18 C right now"


@dataclass
class Target:
    """One way to get an answer, timed request by request."""

    name: str
    call: Callable[[], Awaitable[None]]
    samples: list[float]


@contextlib.contextmanager
def upstream_stub() -> Iterator[str]:
    """`stub_providers.py` in its own process; yields its root URL."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "stub_providers.py"), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            raise RuntimeError(f"stub_providers.py did not start (it printed {line!r})")
        root = f"http://127.0.0.1:{int(line.split()[1])}"
        _wait(root + "/v1/chat/completions", proc, 30, expect_any=True)
        yield root
    finally:
        stop(proc)


def _wait(url: str, proc: subprocess.Popen[Any], timeout_s: float, *, expect_any: bool = False) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            status = httpx.get(url, timeout=2).status_code
            if expect_any or status == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def litellm_proxy(litellm: Path, upstream: str) -> Iterator[Server]:
    """LiteLLM's proxy (one worker) forwarding `stub-text` to `upstream`; yields it as a `Server` (URL, key)."""
    import socket

    with tempfile.TemporaryDirectory(prefix="miniagent-litellm-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {UPSTREAM_MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{UPSTREAM_MODEL}\n"
            f"      api_base: {upstream}/v1\n"
            "      api_key: sk-bench-not-a-real-key\n"
            "general_settings:\n"
            "  master_key: os.environ/LITELLM_MASTER_KEY\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        key = "sk-bench-" + secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        env |= {
            "LITELLM_MASTER_KEY": key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list from the internet at start-up
            "NO_PROXY": "127.0.0.1,localhost",
            "DO_NOT_TRACK": "1",
        }
        log = (Path(tmp) / "litellm.log").open("w")
        cmd = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen([*cmd, "--telemetry", "False"], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait(f"http://127.0.0.1:{port}/health/liveliness", proc, 120)
            yield Server(f"http://127.0.0.1:{port}", key, proc.pid, Path(tmp))
        finally:
            stop(proc)
            log.close()


def _post(client: httpx.AsyncClient, url: str, key: str, model: str, expect: str) -> Callable[[], Awaitable[None]]:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"Authorization": f"Bearer {key}"}

    async def call() -> None:
        response = await client.post(url, json=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{url} ({model}) answered {response.status_code}: {response.text[:300]}")
        text = response.json()["choices"][0]["message"]["content"] or ""
        if expect not in text:
            raise RuntimeError(f"{url} ({model}) answered {text[:120]!r}, without {expect!r}")

    return call


async def measure(targets: list[Target], *, warmup: int, rounds: int, block: int) -> None:
    """Warm every target up, then `rounds` rounds of one `block` per target, the order rotating each round."""
    for target in targets:
        for _ in range(warmup):
            await target.call()
    for r in range(rounds):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]
        for target in order:
            for _ in range(block):
                start = time.perf_counter()
                await target.call()
                target.samples.append(time.perf_counter() - start)


async def run(args: argparse.Namespace, server: Server, upstream: str, litellm: Server | None) -> list[Target]:
    """Build the targets and measure them."""
    sys.path.insert(0, str(BENCH))
    from server_app import PROMPT_PREFIX, bench_agents

    agent = bench_agents()[0]

    async def in_process() -> None:
        output = (await agent.run(PROMPT)).output
        if not str(output).startswith(PROMPT_PREFIX):
            raise RuntimeError(f"the in-process agent answered {output!r}")

    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        targets = [
            Target("in-process agent", in_process, []),
            Target("miniagent server", _post(client, server.url + "/v1/chat/completions", server.key, "bench", ""), []),
            Target(
                "stub direct",
                _post(client, upstream + "/v1/chat/completions", "sk-bench", UPSTREAM_MODEL, UPSTREAM_TEXT),
                [],
            ),
            Target(
                "miniagent proxy",
                _post(client, server.url + "/v1/chat/completions", server.key, "proxy", UPSTREAM_TEXT),
                [],
            ),
        ]
        if litellm is not None:
            url = litellm.url + "/v1/chat/completions"
            targets.append(Target("LiteLLM proxy", _post(client, url, litellm.key, UPSTREAM_MODEL, UPSTREAM_TEXT), []))
        await measure(targets, warmup=args.warmup, rounds=args.rounds, block=args.block)
    return targets


def _row(name: str, t: Target, base: Target | None) -> list[str]:
    p50, p95, p99 = quantiles_ms(t.samples)
    if base is None:
        return [name, f"{p50:.2f}", f"{p95:.2f}", f"{p99:.2f}", "", ""]
    b50, b95, _ = quantiles_ms(base.samples)
    return [name, f"{p50:.2f}", f"{p95:.2f}", f"{p99:.2f}", f"{p50 - b50:+.2f}", f"{p95 - b95:+.2f}"]


def main() -> None:
    """Start the upstream stub, the bench server and LiteLLM; measure; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    default_litellm = ROOT / ".venv-litellm" / "bin" / "litellm"
    parser.add_argument("--litellm", type=Path, default=default_litellm, help="LiteLLM's `litellm` executable")
    parser.add_argument("--no-litellm", action="store_true", help="measure miniagent only")
    parser.add_argument("--warmup", type=int, default=50, help="requests per target before measuring")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    parser.add_argument("--block", type=int, default=100, help="requests per target per round")
    parser.add_argument("--throughput-users", type=int, default=50, help="locust users per proxy (0: skip)")
    parser.add_argument("--throughput-duration", type=float, default=20.0, help="seconds per proxy")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.rounds <= 0 or args.block <= 0 or args.warmup < 0:
        parser.error("--rounds and --block must be positive, --warmup at least 0")
    use_litellm = not args.no_litellm and args.litellm.exists()
    note = "" if use_litellm or args.no_litellm else f"LiteLLM not measured: {args.litellm} does not exist"

    print(f"machine: {machine()}", flush=True)
    throughput: list[tuple[str, Step]] = []
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(upstream_stub())
        server = stack.enter_context(server_process(upstream=upstream + "/v1", upstream_model=UPSTREAM_MODEL))
        litellm = stack.enter_context(litellm_proxy(args.litellm, upstream)) if use_litellm else None
        started = time.monotonic()
        targets = asyncio.run(run(args, server, upstream, litellm))
        elapsed = time.monotonic() - started
        if args.throughput_users > 0:
            env = {"MINIAGENT_LOAD_EXPECT": UPSTREAM_TEXT}
            proxies = [("miniagent proxy", server, "proxy")] + (
                [("LiteLLM proxy", litellm, UPSTREAM_MODEL)] * bool(litellm)
            )
            for name, target, model in proxies:
                assert target is not None
                step = run_locust(
                    target,
                    "ChatUser",
                    users=args.throughput_users,
                    duration_s=args.throughput_duration,
                    extra_env=env | {"MINIAGENT_LOAD_MODEL": model},
                )
                throughput.append((name, step))
    by_name = {t.name: t for t in targets}
    n = args.rounds * args.block
    print(f"\n{n} requests per target, one at a time, {args.rounds} interleaved rounds, {elapsed:.0f} s\n")
    print(
        markdown_table(
            ["target", "p50 ms", "p95 ms", "p99 ms", "added p50 ms", "added p95 ms"],
            [
                _row("in-process agent (FunctionModel)", by_name["in-process agent"], None),
                _row("miniagent server, same agent", by_name["miniagent server"], by_name["in-process agent"]),
                _row("stub direct (upstream)", by_name["stub direct"], None),
                _row("miniagent server -> stub", by_name["miniagent proxy"], by_name["stub direct"]),
                *(
                    [_row("LiteLLM proxy -> stub", by_name["LiteLLM proxy"], by_name["stub direct"])]
                    if "LiteLLM proxy" in by_name
                    else []
                ),
            ],
        )
    )
    if throughput:
        print(f"\nThroughput at {args.throughput_users} concurrent clients, {args.throughput_duration:g} s each\n")
        print(
            markdown_table(
                ["proxy", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
                [
                    [name, f"{s.rps:,.0f}", f"{s.p50_ms:g}", f"{s.p95_ms:g}", f"{s.p99_ms:g}", s.failures]
                    for name, s in throughput
                ],
            )
        )
        for name, s in throughput:
            for line in s.errors[:5]:
                print(f"  {name} error: {line}")
    if note:
        print(f"\n{note}")
    if args.json:
        figures: dict[str, Any] = {"machine": machine(), "note": note, "targets": {}}
        for t in targets:
            p50, p95, p99 = quantiles_ms(t.samples)
            figures["targets"][t.name] = {
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
                "mean_ms": statistics.fmean(t.samples) * 1000,
                "n": len(t.samples),
            }
        figures["throughput"] = {name: s.as_dict() for name, s in throughput}
        args.json.write_text(json.dumps(figures, indent=2))
    sys.exit(1 if any(s.failures for _, s in throughput) else 0)


if __name__ == "__main__":
    main()
