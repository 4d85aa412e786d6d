"""The server's pepper: the secret HMAC key of API key hashes (no web framework imported: `miniagent keys` uses it)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["PEPPER_FILE", "resolve_pepper"]

PEPPER_FILE = "server_pepper"
"""The file beside an embedded SQLite store that keeps its generated pepper."""


def resolve_pepper(settings: Settings, database_url: str) -> bytes:
    """The API key pepper: `MINIAGENT_SERVER_PEPPER`, else (embedded SQLite only) one generated once and kept in a
    `server_pepper` file (mode 0600) beside the database file.

    Raises:
        UserError: No pepper is set and the database is not a local SQLite file, or the file cannot be written.
    """  # noqa: D205
    if settings.server_pepper is not None:
        value = settings.server_pepper.get_secret_value().encode()
        if len(value) < 16:
            raise UserError("MINIAGENT_SERVER_PEPPER is too short: use at least 16 random characters (32 is better).")
        return value
    if not database_url.startswith("sqlite"):
        raise UserError(
            "Set MINIAGENT_SERVER_PEPPER (a long random secret, the same on every replica) to serve with a database "
            'server: `python -c "import secrets; print(secrets.token_urlsafe(32))"`.'
        )
    _, _, rest = database_url.partition(":///")
    path = rest.split("?", 1)[0]
    if not path or path == ":memory:":
        raise UserError("An in-memory SQLite store needs MINIAGENT_SERVER_PEPPER (keys would not survive anyway).")
    file = Path(path).expanduser().parent / PEPPER_FILE
    try:
        if file.exists():
            value = file.read_bytes().strip()
            if len(value) >= 16:
                return value
            file.unlink()  # empty or truncated: make a new one (no key can have been made with it)
        file.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32).encode()
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return file.read_bytes().strip()
        with os.fdopen(fd, "wb") as out:
            out.write(value + b"\n")
        return value
    except OSError as exc:
        raise UserError(
            f"Cannot keep the server's pepper in {str(file)!r} ({exc}); set MINIAGENT_SERVER_PEPPER instead."
        ) from exc
