"""The public surface of `miniagent.observability`: complete, sorted, and light to import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import miniagent.observability as observability


def test_all_is_sorted_and_importable() -> None:
    assert sorted(observability.__all__) == observability.__all__
    for name in observability.__all__:
        assert getattr(observability, name) is not None, name
    assert observability.registry is observability.get_registry()
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = observability.nope


def test_import_configures_nothing_and_loads_no_backend() -> None:
    code = (
        "import sys, json, logging, miniagent.observability, miniagent.events as e; "
        "print(json.dumps([sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'opentelemetry', 'prometheus_client', 'structlog'}), len(logging.root.handlers), len(e.event_handlers())]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == [[], 0, 0]
