"""External tools (run by the caller, e.g. an OpenAI client's `tools`): a call to one ends the run, handed over."""

from __future__ import annotations

from typing import Any

import pytest

from miniagent import Agent, ModelRequest, ModelResponse, TextPart, ToolCallPart, UserError
from miniagent.agent import ExternalToolCalls
from miniagent.errors import OutputTypeError
from miniagent.events import RunFinished, ToolCallStarted
from miniagent.models import ToolDefinition
from miniagent.testing import ScriptedModel, tool_call_response

pytestmark = pytest.mark.anyio

LOCATE = ToolDefinition(
    "locate_user",
    "Where the user is.",
    {"type": "object", "properties": {"precise": {"type": "boolean"}}},
    kind="external",
)


def agent_with_own_tool(model: ScriptedModel) -> tuple[Agent[None, str], list[str]]:
    ran: list[str] = []
    agent = Agent(model=model, instructions="Help.")

    @agent.tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        ran.append(city)
        return f"Sunny in {city}"

    return agent, ran


async def test_a_call_of_an_external_tool_ends_the_run_and_hands_it_over() -> None:
    model = ScriptedModel([tool_call_response(("locate_user", {"precise": True}))])
    agent, _ = agent_with_own_tool(model)
    variant = agent._variant(external_tools=[LOCATE])
    events: list[Any] = []

    async def sink(event: Any) -> None:
        events.append(event)

    result = await variant.run("Weather here?", event_sink=sink)

    assert isinstance(result.output, ExternalToolCalls)
    [call] = result.output.calls
    assert (call.tool_name, call.args_dict()) == ("locate_user", {"precise": True})
    # the model was offered the agent's own tool and the external one
    assert [(t.name, t.kind) for t in model.calls[0].params.function_tools] == [
        ("get_weather", "function"),
        ("locate_user", "external"),
    ]
    # nothing was executed, and the run ended normally with the calls as its output
    assert not any(isinstance(e, ToolCallStarted) for e in events)
    assert isinstance(events[-1], RunFinished) and events[-1].output == result.output
    assert isinstance(result.messages[-1], ModelResponse)
    model.assert_consumed()


async def test_the_agents_own_tools_still_run_and_the_caller_continues_with_results() -> None:
    model = ScriptedModel(
        [
            tool_call_response(("get_weather", {"city": "Paris"})),
            tool_call_response(("locate_user", {})),
            "Sunny where you are.",
        ]
    )
    agent, ran = agent_with_own_tool(model)
    variant = agent._variant(external_tools=[LOCATE])
    first = await variant.run("Weather in Paris, and here?")
    assert ran == ["Paris"]
    assert isinstance(first.output, ExternalToolCalls)
    call = first.output.calls[0]

    from miniagent import ToolReturnPart

    history = [*first.all_messages(), ModelRequest([ToolReturnPart("locate_user", "Lyon", call.tool_call_id)])]
    second = await variant.run(message_history=history)
    assert second.output == "Sunny where you are."
    last_request = model.calls[2].messages[-1]
    assert isinstance(last_request, ModelRequest)
    assert last_request.parts == [ToolReturnPart("locate_user", "Lyon", call.tool_call_id)]
    model.assert_consumed()


async def test_calls_of_own_tools_beside_an_external_call_are_not_executed() -> None:
    model = ScriptedModel([tool_call_response(("get_weather", {"city": "Oslo"}), ("locate_user", {}))])
    agent, ran = agent_with_own_tool(model)
    result = await agent._variant(external_tools=[LOCATE]).run("Go")
    assert ran == []
    assert isinstance(result.output, ExternalToolCalls)
    assert [c.tool_name for c in result.output.calls] == ["locate_user"]


async def test_the_served_agent_is_unchanged_and_shares_its_model() -> None:
    model = ScriptedModel(["plain", "plain again"])
    agent, _ = agent_with_own_tool(model)
    variant = agent._variant(output_type=dict[str, Any], external_tools=[LOCATE])
    assert agent.output_type is str and variant.output_type == dict[str, Any]
    assert agent._request_params().function_tools == [agent.tools[0].definition]
    assert agent.resolve_model() is variant.resolve_model()
    assert (await agent.run("Hi")).output == "plain"
    assert agent._variant().output_type is str


async def test_structured_output_still_wins_over_external_calls() -> None:
    model = ScriptedModel(
        [ModelResponse([ToolCallPart("final_result", {"a": 1}, "c1"), ToolCallPart("locate_user", {}, "c2")])]
    )
    agent = Agent(model=model)
    result = await agent._variant(output_type=dict[str, int], external_tools=[LOCATE]).run("Go")
    assert result.output == {"a": 1}


def test_invalid_external_tools_are_refused() -> None:
    agent, _ = agent_with_own_tool(ScriptedModel([]))
    with pytest.raises(UserError, match="kind='external'"):
        agent._variant(external_tools=[ToolDefinition("x", "", {"type": "object"})])
    clash = ToolDefinition("get_weather", "", {"type": "object"}, kind="external")
    with pytest.raises(UserError, match="'get_weather' has the name of another tool"):
        agent._variant(external_tools=[clash])
    with pytest.raises(UserError, match="has the name of another tool"):
        agent._variant(external_tools=[LOCATE, LOCATE])
    reserved = ToolDefinition("final_result", "", {"type": "object"}, kind="external")
    with pytest.raises(UserError, match="reserved for structured output"):
        agent._variant(output_type=dict[str, int], external_tools=[reserved])
    with pytest.raises(OutputTypeError):
        agent._variant(output_type=3)


async def test_text_before_an_external_call_is_kept_in_the_response() -> None:
    model = ScriptedModel([ModelResponse([TextPart("Let me check."), ToolCallPart("locate_user", "{}", "c9")])])
    agent = Agent(model=model)
    result = await agent._variant(external_tools=[LOCATE]).run("Where am I?")
    assert isinstance(result.output, ExternalToolCalls)
    assert result.response.text == "Let me check."
