"""The baseline: the same agent job written by hand on the raw `openai` SDK (call, run both tools, call again)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from _harness import INSTRUCTIONS, PROMPT, RunOnce, check_answer, get_time, get_weather

MODEL = "stub-model"

_FUNCTIONS: dict[str, Callable[..., str]] = {"get_weather": get_weather, "get_time": get_time}
_CITY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather for a city.", "parameters": _CITY_SCHEMA},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Local time in a city.", "parameters": _CITY_SCHEMA},
    },
]


def raw_client(base_url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base_url, api_key="sk-bench-not-a-real-key", max_retries=0)


def raw_run_once(client: AsyncOpenAI) -> RunOnce:
    async def run_once() -> str:
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": PROMPT},
        ]
        for _ in range(5):
            completion = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
            message = completion.choices[0].message
            calls = [c for c in message.tool_calls or () if c.type == "function"]
            if not calls:
                answer = message.content or ""
                check_answer(answer, "raw openai")
                return answer
            messages.append(
                {
                    "role": "assistant",
                    "content": message.content,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.function.name, "arguments": c.function.arguments},
                        }
                        for c in calls
                    ],
                }
            )
            for call in calls:
                result = _FUNCTIONS[call.function.name](**json.loads(call.function.arguments))
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        raise RuntimeError("the stub never gave a final answer")

    return run_once
