from __future__ import annotations

import json
import subprocess
import sys

import pytest

import miniagent
from miniagent import testing


def test_all_is_complete_and_importable() -> None:
    for name in miniagent.__all__:
        assert getattr(miniagent, name) is not None, name
    for name in testing.__all__:
        assert getattr(testing, name) is not None, name
    assert sorted(testing.__all__) == testing.__all__


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = miniagent.Nope


def test_import_is_light() -> None:
    code = (
        "import sys, json, miniagent; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'openai','anthropic','fastapi','sqlalchemy','llama_cpp','httpx','typer','rich','pydantic_settings',"
        "'docstring_parser'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == []


def test_lazy_exports_resolve() -> None:
    from miniagent.settings import Settings

    assert miniagent.Settings is Settings
