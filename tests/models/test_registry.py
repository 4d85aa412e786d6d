from __future__ import annotations

import pytest

from miniagent import Agent
from miniagent.errors import MissingCredentialError, ModelNotFoundError, UserError
from miniagent.models import Model, ModelRegistry, infer_model
from miniagent.models.test import EchoModel
from miniagent.settings import Settings
from miniagent.testing import ScriptedModel


def test_strings_resolve_through_the_registry() -> None:
    assert isinstance(infer_model("test"), EchoModel)
    model = ScriptedModel([])
    assert infer_model(model) is model


def test_unknown_provider_suggests_the_closest() -> None:
    with pytest.raises(ModelNotFoundError, match="Did you mean 'openai'"):
        infer_model("opneai:gpt-4o")


def test_a_provider_without_its_key_names_the_variable() -> None:
    with pytest.raises(MissingCredentialError, match="ANTHROPIC_API_KEY"):
        infer_model("anthropic:claude-sonnet-4-5")


def test_default_model_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIAGENT_DEFAULT_MODEL", "test")
    assert isinstance(Agent().resolve_model(), EchoModel)
    assert Agent().run_sync("hi").output == "echo: hi"


def test_third_party_registration_and_bad_prefix() -> None:
    registry = ModelRegistry()

    def factory(name: str, settings: Settings) -> Model:
        return ScriptedModel([name])

    registry.register("mine", factory, description="a plugin")
    model = registry.resolve("mine:hello", Settings())
    assert isinstance(model, ScriptedModel)
    assert "mine" in [e.prefix for e in registry.entries()]
    with pytest.raises(UserError, match="without ':'"):
        registry.register("a:b", factory)


def test_plugins_can_be_restricted(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry()
    assert {e.prefix for e in registry.entries(Settings(load_plugins=""))} >= {"local", "openai", "test"}


def test_a_model_that_implements_nothing_says_so() -> None:
    class Empty(Model):
        pass

    import anyio

    from miniagent.models import ModelRequestParameters

    with pytest.raises(NotImplementedError, match="must implement `request` or `request_stream`"):
        anyio.run(Empty().request, [], None, ModelRequestParameters())
    with pytest.raises(NotImplementedError, match="does not count tokens"):
        Empty().count_tokens([])
