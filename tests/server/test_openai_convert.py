"""From an OpenAI chat request to a run plan: the conversation mapping and the requests it refuses (no server)."""

from __future__ import annotations

from typing import Any

import pytest

from miniagent import Agent
from miniagent.messages import (
    ImageUrl,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from miniagent.server._errors import ApiError
from miniagent.server._openai_convert import RunPlan, finish_reason, output_content, plan_run
from miniagent.server._openai_types import ChatCompletionRequest
from miniagent.testing import ScriptedModel, text_response


def served() -> Agent[None, str]:
    agent = Agent(ScriptedModel([]), name="served")

    @agent.tool
    def lookup(q: str) -> str:
        """Look something up."""
        return q

    return agent


def plan(**body: Any) -> RunPlan:
    body.setdefault("model", "served")
    return plan_run(served(), ChatCompletionRequest.model_validate(body))


def refused(**body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        plan(**body)
    assert caught.value.status == 400
    return caught.value


def test_a_conversation_of_only_a_user_message() -> None:
    result = plan(messages=[{"role": "user", "content": "Hi"}])
    assert result.history == [ModelRequest([UserPromptPart("Hi")])]
    assert result.settings is None and result.structured == "text" and result.client_tools == frozenset()
    assert result.agent.output_type is str


def test_images_refusals_and_list_contents() -> None:
    result = plan(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}], "refusal": "No."},
            {"role": "user", "content": "Please?"},
        ]
    )
    assert result.history[0] == ModelRequest(
        [SystemPromptPart("A\nB"), UserPromptPart("", attachments=[ImageUrl("data:image/png;base64,AAAA")])]
    )
    assert isinstance(result.history[1], ModelResponse) and result.history[1].parts == [TextPart("No.")]
    assert result.history[2] == ModelRequest([UserPromptPart("Please?")])
    only_field = plan(
        messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "refusal": "I can't."},
            {"role": "user", "content": "y"},
        ]
    )
    assert only_field.history[1].parts == [TextPart("I can't.")]


def test_a_conversation_that_starts_with_the_assistant_gets_the_system_parts_first() -> None:
    result = plan(
        messages=[
            {"role": "developer", "content": "Be kind."},
            {"role": "assistant", "content": "Welcome!"},
            {"role": "user", "content": "Thanks"},
        ]
    )
    assert result.history[0] == ModelRequest([SystemPromptPart("Be kind.")])
    assert isinstance(result.history[1], ModelResponse) and result.history[1].parts == [TextPart("Welcome!")]


def test_tool_results_in_list_content_and_several_calls() -> None:
    result = plan(
        messages=[
            {"role": "user", "content": "Two lookups"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "ext", "arguments": '{"x": 1}'}},
                    {"id": "b", "type": "function", "function": {"name": "ext", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "two"}]},
            {"role": "tool", "tool_call_id": "a", "content": "one"},
        ]
    )
    assert result.history[1] == ModelResponse(
        [ToolCallPart("ext", '{"x": 1}', "a"), ToolCallPart("ext", "{}", "b")],
        finish_reason="tool_call",
        timestamp=result.history[1].timestamp,  # type: ignore[union-attr]
    )
    assert result.history[2] == ModelRequest([ToolReturnPart("ext", "two", "b"), ToolReturnPart("ext", "one", "a")])


def test_client_tools_and_sampling_settings() -> None:
    result = plan(
        messages=[{"role": "user", "content": "x"}],
        tools=[
            {"type": "function", "function": {"name": "no_params"}},
            {"type": "function", "function": {"name": "with_params", "parameters": {"type": "object"}}},
        ],
        max_tokens=10,
        top_p=0.5,
    )
    assert result.client_tools == frozenset({"no_params", "with_params"})
    definitions = {t.name: t for t in result.agent._request_params().function_tools}
    assert definitions["lookup"].kind == "function"
    assert definitions["no_params"].kind == "external"
    assert definitions["no_params"].parameters_json_schema == {"type": "object", "properties": {}}
    assert result.settings is not None and (result.settings.max_tokens, result.settings.top_p) == (10, 0.5)
    assert plan(messages=[{"role": "user", "content": "x"}], max_tokens=5, max_completion_tokens=7).settings == (
        plan(messages=[{"role": "user", "content": "x"}], max_completion_tokens=7).settings
    )


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0", "last message must be the user's"),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [
                    {"type": "function", "function": {"name": "t"}},
                    {"type": "function", "function": {"name": "t"}},
                ],
            },
            "tools.1",
            "Two tools are named 't'",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "t", "parameters": {"type": "array"}}}],
            },
            "tools.0.function.parameters",
            "must be a JSON schema of an object",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "t", "parameters": {"properties": {"a": 1}}}}],
            },
            "tools.0.function.parameters",
            "`properties` an object of schemas",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "t", "parameters": {"required": "a"}}}],
            },
            "tools.0.function.parameters",
            "`required` a list of names",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "lookup"}}],
            },
            "tools",
            "has the name of another tool",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "a", "type": "function", "function": {"name": "t", "arguments": "[1]"}}],
                    },
                    {"role": "tool", "tool_call_id": "a", "content": "r"},
                ]
            },
            "messages.1.tool_calls.0.function.arguments",
            "must be a JSON object as text",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "a", "type": "function", "function": {"name": "t", "arguments": "{}"}}],
                    },
                    {"role": "tool", "tool_call_id": "a", "content": "r"},
                    {"role": "tool", "tool_call_id": "a", "content": "r"},
                ]
            },
            "messages.3.tool_call_id",
            "answered twice",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "a", "type": "function", "function": {"name": "t", "arguments": "{}"}}],
                    },
                    {"role": "user", "content": "y"},
                ]
            },
            "messages.1",
            "'a' of messages.1 has no result",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}, {"role": "user", "content": "y"}]},
            "messages.1",
            "needs `content` or `tool_calls`",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc"}}]}]},
            "messages.0.content",
            "http(s) or data: URL",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tool_choice": {"type": "function", "function": {"name": "t"}},
            },
            "tool_choice",
            "not supported",
        ),
    ],
)
def test_requests_the_agent_cannot_answer(body: dict[str, Any], param: str, message: str) -> None:
    error = refused(**body)
    assert error.param == param and message in error.message


def test_answer_helpers() -> None:
    assert output_content({"a": "é"}, "json_object") == '{"a": "é"}'
    assert output_content("text", "text") == "text"
    assert output_content([1], "text") == "[1]"
    assert finish_reason(None, tool_calls=True) == "tool_calls"
    cut = text_response("...")
    cut.finish_reason = "length"
    assert finish_reason(cut, tool_calls=False) == "length"
    cut.finish_reason = "content_filter"
    assert finish_reason(cut, tool_calls=False) == "content_filter"
    assert finish_reason(None, tool_calls=False) == "stop"
