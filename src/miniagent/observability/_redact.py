"""Redaction: API keys, bearer tokens, passwords and configured secret values never leave in logs, spans or metrics.

One [`Redactor`][miniagent.observability.Redactor] holds the patterns and the known secret values; the log
processor, the span attributes and events, the exporter wrapper and the metric labels all pass through it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from ..errors import UserError

__all__ = ["REDACTED", "Redactor", "is_secret_key", "redact", "secret_values_from_env", "secret_values_from_settings"]

REDACTED = "[REDACTED]"
"""What a hidden secret is replaced with."""

_MIN_SECRET_LENGTH = 6  # shorter configured "secrets" would redact ordinary words
_MAX_DEPTH = 6  # nested structures in a log line deeper than this are rendered as text before redaction

# Each pattern hides what lies between its optional `pre` and `post` groups.
_PATTERNS: tuple[re.Pattern[str], ...] = (
    # Authorization headers, whatever the scheme, in `key: value`, `key=value` and JSON/dict renderings.
    re.compile(
        r"(?i)(?P<pre>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?)"
        r"[^\s\"',;}]{3,}"
    ),
    re.compile(r"(?i)(?P<pre>\bbearer\s+)[A-Za-z0-9._~+/=-]{6,}"),
    # OpenAI (sk-..., sk-proj-...), Anthropic (sk-ant-...) and look-alike keys.
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
    # key=value / "key": "value" pairs whose key names a secret.
    re.compile(
        r"(?i)(?P<pre>\b[\w-]*(?:api[_-]?key|apikey|x-api-key|password|passwd|pwd|secret|access[_-]?token|"
        r"refresh[_-]?token|auth[_-]?token|session[_-]?token|client[_-]?secret|private[_-]?key|token)"
        r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]{3,}"
    ),
    # JSON Web Tokens: base64url `{"` header, payload, signature.
    re.compile(r"\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*"),
    # A password in a URL: scheme://user:password@host.
    re.compile(r"(?P<pre>://[^/\s:@]+:)[^@/\s]+(?P<post>@)"),
    # Well-known key shapes: AWS access keys, GitHub, Slack and Google API tokens.
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"),
)

# A cheap prefilter: text without any of these fragments cannot match a pattern above.
_HINTS = re.compile(r"(?i)sk-|bearer|authoriz|key|passw|pwd|secret|token|eyJ|://|AKIA|ASIA|gh[pousr]_|github_|xox|AIza")

_SECRET_KEY = re.compile(
    r"(?i)^(?:.*[_.-])?(?:api[_-]?key|apikey|password|passwd|pwd|secret|token|access[_-]?token|refresh[_-]?token|"
    r"authorization|auth|cookie|set[_-]cookie|credentials?|private[_-]?key|client[_-]?secret|x[_-]api[_-]key)$"
)
_SECRET_ENV_NAME = re.compile(r"(?i)(?:_KEY|_TOKEN|SECRET|PASSWORD|PASSWD|_PAT)$|API_?KEY|SECRET|PASSWORD")


@lru_cache(maxsize=2048)
def is_secret_key(key: str) -> bool:
    """Whether a mapping key (a log field, an HTTP header, a tool argument) names a secret, e.g. `api_key`.

    Counters such as `input_tokens` or `max_tokens` do not: only a key that *is* a secret's name (optionally
    prefixed, as in `openai_api_key` or `x-api-key`) does.
    """
    return _SECRET_KEY.match(key) is not None


def _hide(match: re.Match[str]) -> str:
    groups = match.groupdict()
    return (groups.get("pre") or "") + REDACTED + (groups.get("post") or "")


def secret_values_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-looking environment variables (`*_API_KEY`, `*_TOKEN`, `*SECRET*`, `*PASSWORD*`)."""
    env = os.environ if environ is None else environ
    return [value for name, value in env.items() if _SECRET_ENV_NAME.search(name) and len(value) >= _MIN_SECRET_LENGTH]


def secret_values_from_settings(settings: object) -> list[str]:
    """Every `SecretStr` value of a settings object (pydantic), plus a password in its `database_url`."""
    from pydantic import BaseModel, SecretStr

    values: list[str] = []
    if not isinstance(settings, BaseModel):
        return values
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if isinstance(item, SecretStr):
                values.append(item.get_secret_value())
    url = getattr(settings, "database_url", None)
    if isinstance(url, str):
        match = re.search(r"://[^/\s:@]+:([^@/\s]+)@", url)
        if match:
            values.append(match.group(1))
    return values


class Redactor:
    """Replaces secrets in text and structures with `[REDACTED]`.

    Example:
        ```python
        from miniagent.observability import Redactor

        redactor = Redactor(["hunter2-the-password"])
        text = redactor.redact("login failed for hunter2-the-password with Bearer abc.def.ghi-123456")
        assert text == "login failed for [REDACTED] with Bearer [REDACTED]"
        ```

    Args:
        secrets: Exact values to hide wherever they appear (values shorter than 6 characters are ignored: they
            would hide ordinary words).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        given: list[object] = list(secrets)
        wrong = next((s for s in given if not isinstance(s, str)), None)
        if wrong is not None:
            raise UserError(f"Secrets to redact must be strings, got {type(wrong).__name__}; pass str values.")
        values = sorted({s for s in given if isinstance(s, str) and len(s) >= _MIN_SECRET_LENGTH}, key=len)
        values.reverse()  # longest first, so a secret containing another is hidden whole
        self._values = tuple(values)
        self._exact = re.compile("|".join(re.escape(v) for v in values)) if values else None
        self._cached = lru_cache(maxsize=4096)(self._redact_text)

    @property
    def secret_count(self) -> int:
        """How many exact secret values are hidden."""
        return len(self._values)

    def _redact_text(self, text: str) -> str:
        if self._exact is not None:
            text = self._exact.sub(REDACTED, text)
        if _HINTS.search(text) is None:
            return text
        for pattern in _PATTERNS:
            text = pattern.sub(_hide, text)
        return text

    def redact(self, text: str) -> str:
        """`text` with every secret pattern and configured value replaced by `[REDACTED]`."""
        if len(text) <= 256:  # short, repeated strings (names, labels, ids): cached
            return self._cached(text)
        return self._redact_text(text)

    def redact_value(self, value: Any, _depth: int = 0) -> Any:
        """`value` with secrets hidden: strings are redacted, mappings and sequences recursively (new objects).

        A mapping value whose key names a secret (`api_key`, `password`, `Authorization`...) is hidden whole.
        Other values (numbers, booleans, `None`) are returned as they are; anything else is rendered with `str`
        only when it contains a secret.
        """
        if isinstance(value, str):
            return self.redact(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if _depth >= _MAX_DEPTH:
            return self.redact(str(value))
        if isinstance(value, Mapping):
            return {
                k: (REDACTED if isinstance(k, str) and is_secret_key(k) and v else self.redact_value(v, _depth + 1))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact_value(v, _depth + 1) for v in value]
        if isinstance(value, bytes):
            return value
        text = str(value)
        hidden = self.redact(text)
        return value if hidden == text else hidden


_default: Redactor | None = None


def default_redactor() -> Redactor:
    """The redactor `configure` installed, or one with the secret-looking environment variables' values."""
    global _default
    if _default is None:
        _default = Redactor(secret_values_from_env())
    return _default


def set_default_redactor(redactor: Redactor | None) -> None:
    """Install (or with `None` reset) the redactor [`redact`][miniagent.observability.redact] uses."""
    global _default
    _default = redactor


def redact(text: str) -> str:
    """`text` with API keys, bearer tokens, passwords and configured secret values replaced by `[REDACTED]`.

    Uses the secrets given to [`configure`][miniagent.observability.configure] (and the values of secret-looking
    environment variables) once it ran.

    Example:
        ```python
        from miniagent.observability import redact

        assert redact("Authorization: Bearer sk-abcdefghijklmnop") == "Authorization: Bearer [REDACTED]"
        assert redact("connect to postgresql://app:pa55word@db/app") == "connect to postgresql://app:[REDACTED]@db/app"
        ```
    """
    if not isinstance(text, str):
        raise TypeError(f"redact() takes a string, got {type(text).__name__}; use Redactor.redact_value for others.")
    return default_redactor().redact(text)
