"""Fuzzing: schemathesis against the app's own `openapi.json` finds no 5xx and no response that breaks the schema.

The real app runs under uvicorn on loopback (`live_server`), on a temp SQLite store, serving the `echo` agent
(`EchoModel`). Schemathesis 4 runs as its own process (its CLI, `python -m schemathesis.cli run`), authenticated
with a real API key that has the `admin` scope (so every operation is reachable), through all its phases:
the schema's examples, the coverage phase (boundary and invalid values per parameter), random fuzzing (valid and
invalid data) and the stateful phase (chains of operations linked by their responses: create a thread, post to it,
stream its run...). The number of cases per operation is pinned (`MAX_EXAMPLES`), and generation is
deterministic (`--generation-deterministic`: no random seed, no example database): every run sends the same
requests.

Checked on every response: no 5xx (`not_a_server_error`), the status code is one the operation documents
(`status_code_conformance`), the content type too (`content_type_conformance`), and the body (JSON, or each SSE
event) matches the documented schema (`response_schema_conformance`).

One operation is left out: revoking an API key (`DELETE /api/v1/admin/keys/{key_id}`), because the stateful
phase would revoke the fuzzer's own key (it lists the keys and feeds their ids to the delete) and every later
request would get 401; the core tests cover revocation.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import ApiKeyFactory, AppFactory, LiveServer

MAX_EXAMPLES = 10
"""Cases per operation and phase (schemathesis' `--max-examples`): pinned so the run is bounded (about 35 s)."""
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")
"""What every response must pass."""


def _failures_summary(output: str, limit: int = 150) -> str:
    """The gist of schemathesis' failures: per operation, the failure codes, statuses, bodies and the curl to
    reproduce, each line cut to 300 characters (generated bodies can be megabytes)."""
    keep = ("___", "- ST", "Received:", "Documented:", "[", "`", "curl ", "Failures:", "❌", "Seed:")
    lines = [line.strip()[:300] for line in output.splitlines() if line.strip().startswith(keep)]
    return "\n".join(lines[:limit]) or output[-3000:]


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer, tmp_path: Path
) -> None:
    key = api_key(tenant="fuzz", user="fuzzer", scopes=("admin",))
    with live_server(make_app()) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
        revoke = schema["paths"]["/api/v1/admin/keys/{key_id}"]["delete"]["operationId"]
        operations = sum(
            1
            for item in schema["paths"].values()
            for method in item
            if method in {"get", "post", "put", "patch", "delete"}
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{url}/openapi.json",
                "--header",
                f"Authorization: Bearer {key}",
                "--checks",
                ",".join(CHECKS),
                "--max-examples",
                str(MAX_EXAMPLES),
                "--generation-deterministic",  # implies no example database: nothing is written to disk
                "--request-timeout",
                "20",
                "--exclude-operation-id",
                revoke,
                "--no-color",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,  # schemathesis keeps a `.schemathesis/` directory in its working directory
            timeout=240,
            check=False,
        )
        # The key still works: the fuzzer ran authenticated to the end.
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    output = done.stdout + done.stderr
    assert f"{operations - 1} selected" in output, output[-2000:]
    assert "generated" in output, output[-2000:]  # test cases were generated and sent
    assert done.returncode == 0, _failures_summary(output)
