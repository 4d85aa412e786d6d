"""The server the load, soak and latency benchmarks measure: `create_app` with fast agents, under uvicorn.

Run as its own process: `python bench/server_app.py --data-dir DIR [--port 0] [--upstream URL] ...`. It opens a
fresh store in `DIR` (SQLite), creates an API key with the `chat` scope through the store, then serves on
127.0.0.1 and prints, once it listens:

```
PORT <n>
KEY <secret>
```

The agents it serves (the request's `model` picks one):

- `bench`: a `FunctionModel` that answers at once with `echo: <prompt>` (streamed, in one chunk);
- `bench-stream`: the same answer streamed word by word, padded to `--stream-words` words, waiting
  `--stream-interval-ms` before each, so that streams stay open that long;
- `proxy` (only with `--upstream URL`): an `OpenAIChatModel` on the OpenAI-compatible server at `URL` (model
  `--upstream-model`), for the latency benchmark against LiteLLM's proxy.

Rate limits and budgets are off (the settings leave them unset), access logs are off as with `miniagent serve`'s
defaults for benchmarks; `--access-log` turns uvicorn's on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

PROMPT_PREFIX = "echo: "
"""What the `bench` agent's answers start with (the load test checks it)."""


def bench_agents(
    *, stream_words: int = 5, stream_interval_s: float = 0.0, upstream: str | None = None, upstream_model: str = ""
) -> list[Any]:
    """The agents `bench` (instant `FunctionModel`), `bench-stream` (paced word stream) and, with `upstream`,
    `proxy` (`OpenAIChatModel` on it)."""
    from miniagent import Agent
    from miniagent.messages import ModelMessage, ModelRequest, UserPromptPart
    from miniagent.testing import AgentInfo, FunctionModel

    def prompt(messages: list[ModelMessage]) -> str:
        for message in reversed(messages):
            if isinstance(message, ModelRequest):
                for part in message.parts:
                    if isinstance(part, UserPromptPart):
                        return str(part.content)
        return ""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> str:
        return PROMPT_PREFIX + prompt(messages)

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        words = (PROMPT_PREFIX + prompt(messages)).split(" ")
        words += ["lorem"] * max(0, stream_words - len(words))
        for i, word in enumerate(words[: max(stream_words, 1)]):
            if stream_interval_s > 0:
                await asyncio.sleep(stream_interval_s)
            yield word if i == 0 else " " + word

    agents: list[Any] = [
        Agent(FunctionModel(answer, name="bench-stub"), name="bench"),
        Agent(FunctionModel(answer, stream_function=stream, name="bench-stream-stub"), name="bench-stream"),
    ]
    if upstream:
        from miniagent import OpenAIChatModel

        model = OpenAIChatModel(upstream_model, base_url=upstream, api_key="sk-bench", provider="openai-compatible")
        agents.append(Agent(model, name="proxy"))
    return agents


async def create_key(data_dir: Path, *, scopes: tuple[str, ...] = ("chat",)) -> str:
    """A new API key in the store under `data_dir` (its pepper from `MINIAGENT_SERVER_PEPPER`); returns the secret."""
    from miniagent.settings import Settings
    from miniagent.store import open_store

    settings = Settings(data_dir=data_dir)
    assert settings.server_pepper is not None, "set MINIAGENT_SERVER_PEPPER first"
    store = await open_store(settings=settings)
    try:
        _, secret = await store.create_api_key(
            pepper=settings.server_pepper.get_secret_value().encode(),
            tenant_id="bench",
            user_id="load",
            scopes=scopes,
            name="bench",
        )
    finally:
        await store.close()
    return secret


def main() -> None:
    """Parse the options, create the key, print `PORT` and `KEY`, and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, required=True, help="a fresh directory for the store")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--stream-words", type=int, default=5, help="words per streamed answer of `bench`")
    parser.add_argument("--stream-interval-ms", type=float, default=0.0, help="wait before each streamed word")
    parser.add_argument("--upstream", help="base URL of an OpenAI-compatible server: serve the `proxy` agent on it")
    parser.add_argument("--upstream-model", default="stub-text", help="the model `proxy` asks the upstream for")
    parser.add_argument("--access-log", action="store_true", help="uvicorn's access log on (off by default)")
    parser.add_argument("--scopes", default="chat", help="the key's scopes, comma-separated")
    args = parser.parse_args()

    os.environ.setdefault("MINIAGENT_SERVER_PEPPER", secrets.token_urlsafe(32))
    os.environ["MINIAGENT_DATA_DIR"] = str(args.data_dir)
    for name in [n for n in os.environ if n.startswith(("MINIAGENT_RATE_LIMIT", "MINIAGENT_BUDGET"))]:
        del os.environ[name]  # limits off: the benchmark measures the server, not the limiter's 429s
    key = asyncio.run(create_key(args.data_dir, scopes=tuple(s for s in args.scopes.split(",") if s)))

    import uvicorn

    from miniagent.server import create_app
    from miniagent.settings import Settings

    agents = bench_agents(
        stream_words=args.stream_words,
        stream_interval_s=args.stream_interval_ms / 1000,
        upstream=args.upstream,
        upstream_model=args.upstream_model,
    )
    app = create_app(Settings(data_dir=args.data_dir), agents=agents)
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP (see stub_server.py).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    print(f"KEY {key}", flush=True)
    config = uvicorn.Config(
        app, log_level="warning", access_log=args.access_log, backlog=4096, timeout_keep_alive=30, ws="none"
    )
    uvicorn.Server(config).run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
