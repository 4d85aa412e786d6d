"""Every Python example in the docs, the README and public docstrings runs (on the echo model: no weights)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
import textwrap
import types
from pathlib import Path

import pytest

import miniagent

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _doc_examples() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(FENCE.findall(path.read_text())):
            found.append((f"{path.name}#{i}", block))
    return found


def _docstring_examples() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for info in pkgutil.walk_packages(miniagent.__path__, "miniagent."):
        if info.name.endswith((".local", ".openai_chat", ".openai_responses", ".anthropic", "__main__")):
            continue  # their examples need weights or a server; covered by their own tests
        if ".migrations" in info.name:
            continue  # Alembic scripts run inside Alembic, not on import
        module = importlib.import_module(info.name)
        for name, obj in [(info.name, module), *vars(module).items()]:
            if getattr(obj, "__module__", info.name) != info.name:
                continue
            doc = inspect.getdoc(obj) or ""
            for i, block in enumerate(FENCE.findall(doc)):
                found.append((f"{info.name}:{name}#{i}", textwrap.dedent(block)))
    return sorted(set(found))


@pytest.mark.parametrize(("where", "code"), _doc_examples() + _docstring_examples())
def test_example_runs(where: str, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIAGENT_DEFAULT_MODEL", "test")
    module = types.ModuleType("__example__")
    monkeypatch.setitem(sys.modules, "__example__", module)  # dataclasses look their module up
    exec(compile(code, where, "exec"), module.__dict__)
