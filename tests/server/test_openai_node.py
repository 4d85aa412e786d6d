"""The OpenAI-compatible API from Node: the official `openai` npm package (pinned in `node/package-lock.json`).

The package is installed with `npm ci` into `tests/server/node/node_modules` (once: `make install` does it, and this
test does it when the directory is missing), then `node test.mjs <base_url> <key>` makes a whole and a streamed
request and prints what it got as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from miniagent import Agent
from miniagent.messages import ModelMessage, ModelRequest, UserPromptPart
from miniagent.testing import AgentInfo, FunctionModel

from .conftest import ApiKeyFactory, AppFactory, LiveServer

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The Node project with its `openai` package installed (`npm ci` when `node_modules` is missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None and npm is not None, (
        "Node 20+ and npm are needed: install them (e.g. `apt-get install nodejs npm`)."
    )
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True, timeout=240
        )
    return NODE_DIR


def _echo(messages: list[ModelMessage], info: AgentInfo) -> str:
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    text = next(p.content for p in last.parts if isinstance(p, UserPromptPart))
    return f"echo {text}"


async def _stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for i, word in enumerate(_echo(messages, info).split(" ")):
        yield word if i == 0 else f" {word}"


def test_the_openai_npm_package_is_a_client(
    node_client: Path, make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    agent = Agent(FunctionModel(_echo, stream_function=_stream), name="assistant")
    with live_server(make_app(agents=[agent])) as url:
        done = subprocess.run(
            ["node", "test.mjs", url, api_key()], cwd=node_client, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    assert out["models"] == ["assistant"]
    whole = out["whole"]
    assert whole["object"] == "chat.completion" and whole["id"].startswith("chatcmpl-")
    assert (whole["content"], whole["finish_reason"]) == ("echo hello from node", "stop")
    assert whole["usage"]["completion_tokens"] == 4
    assert whole["usage"]["total_tokens"] == whole["usage"]["prompt_tokens"] + 4
    stream = out["stream"]
    assert len(stream["ids"]) == 1 and stream["ids"][0].startswith("chatcmpl-")
    assert (stream["role"], stream["text"], stream["finish_reasons"]) == (
        "assistant",
        "echo stream from node",
        ["stop"],
    )
    assert stream["usage"]["completion_tokens"] == 4 and stream["usage_chunk_choices"] == 0
    assert out["not_found"] == {"status": 404, "code": "model_not_found", "param": "model", "type": "not_found_error"}
