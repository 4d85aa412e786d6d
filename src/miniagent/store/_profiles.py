"""User profiles: a user's preferences and custom instructions, applied to every conversation of that user.

[`ProfilesMixin`][miniagent.store._profiles.ProfilesMixin] gives [`SQLStore`][miniagent.store.SQLStore] its
`get_profile`/`set_profile`/`update_profile`/`delete_profile` on the `user_profiles` table.
[`UserProfile.prompt()`][miniagent.store.UserProfile.prompt] is the text an agent adds to its system prompt.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

from .._utils import UNSET, Unset
from ..errors import UserError
from ._base import DEFAULT_USER, Now, traced
from ._models import UserProfileRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["KNOWN_PREFERENCES", "PROFILE_HEADER", "ProfilesMixin", "UserProfile"]

KNOWN_PREFERENCES = ("tone", "language", "units")
"""Preferences listed first in the prompt, in this order; any other key follows, sorted."""

PROFILE_HEADER = "About the user you are talking with (their profile; follow it unless they ask otherwise):"
"""The first line of the profile's system prompt part."""

_MAX_KEY = 100
_MAX_VALUE = 2_000
_MAX_INSTRUCTIONS = 20_000


@dataclass(frozen=True, slots=True)
class UserProfile:
    """A user's preferences and custom instructions."""

    user_id: str
    """The user."""
    _: KW_ONLY
    tenant_id: str
    """Their tenant."""
    preferences: dict[str, str] = field(default_factory=dict[str, str])
    """Free-form preferences, e.g. `{'tone': 'concise', 'language': 'French', 'units': 'metric'}`."""
    instructions: str | None = None
    """Custom instructions, in the user's words."""
    updated_at: dt.datetime | None = None
    """When the profile was last written."""

    def prompt(self) -> str | None:
        """The system prompt text for this profile, or `None` when it is empty.

        The format (one `SystemPromptPart`, after the agent's instructions):

        ```text
        About the user you are talking with (their profile; follow it unless they ask otherwise):
        Custom instructions:
        <instructions>
        Preferences:
        - tone: <value>
        - language: <value>
        - units: <value>
        - <other key>: <value>
        ```

        A section without content is left out; `tone`, `language` and `units` come first, other keys sorted.
        """
        lines: list[str] = []
        if self.instructions and self.instructions.strip():
            lines += ["Custom instructions:", self.instructions.strip()]
        known = [k for k in KNOWN_PREFERENCES if k in self.preferences]
        keys = known + sorted(k for k in self.preferences if k not in KNOWN_PREFERENCES)
        if keys:
            lines.append("Preferences:")
            lines += [f"- {k}: {self.preferences[k]}" for k in keys]
        return "\n".join([PROFILE_HEADER, *lines]) if lines else None


def _check(preferences: Mapping[str, str | None], instructions: str | None | Unset) -> None:
    # Typed callers are checked by mypy; these checks are for the CLI, HTTP bodies and untyped code.
    items: list[tuple[object, object]] = list(preferences.items())
    for key, value in items:
        if not isinstance(key, str) or not key.strip() or len(key) > _MAX_KEY or "\n" in key:
            raise UserError(f"Invalid preference name {key!r}: use a non-empty line of at most {_MAX_KEY} characters.")
        if value is not None and (not isinstance(value, str) or len(value) > _MAX_VALUE):
            raise UserError(f"Preference {key!r} must be a string of at most {_MAX_VALUE} characters, got {value!r}.")
    if isinstance(instructions, str) and len(instructions) > _MAX_INSTRUCTIONS:
        raise UserError(f"Custom instructions are limited to {_MAX_INSTRUCTIONS} characters; shorten them.")


class ProfilesMixin:
    """The profile methods of [`SQLStore`][miniagent.store.SQLStore]; each one is one transaction."""

    if TYPE_CHECKING:
        tenant_id: str
        now: Now

        def _session(self) -> AbstractAsyncContextManager[AsyncSession]: ...

        async def _ensure_user(self, session: AsyncSession, tenant_id: str, user_id: str) -> None: ...

    @staticmethod
    def _profile(row: UserProfileRow) -> UserProfile:
        updated = row.updated_at if row.updated_at.tzinfo is not None else row.updated_at.replace(tzinfo=dt.UTC)
        return UserProfile(
            row.user_id,
            tenant_id=row.tenant_id,
            preferences={str(k): str(v) for k, v in (row.preferences or {}).items()},
            instructions=row.instructions,
            updated_at=updated,
        )

    @traced("get_profile")
    async def get_profile(self, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None) -> UserProfile | None:
        """The user's profile, or `None` if they have none."""
        async with self._session() as session:
            row = await session.get(UserProfileRow, (tenant_id or self.tenant_id, user_id))
            return self._profile(row) if row is not None else None

    @traced("set_profile")
    async def set_profile(
        self,
        *,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        preferences: Mapping[str, str] | None = None,
        instructions: str | None = None,
    ) -> UserProfile:
        """Replace the user's whole profile (creating the user if needed)."""
        _check(preferences or {}, instructions)
        tenant = tenant_id or self.tenant_id
        async with self._session() as session:
            await self._ensure_user(session, tenant, user_id)
            row = await session.get(UserProfileRow, (tenant, user_id))
            if row is None:
                row = UserProfileRow(tenant_id=tenant, user_id=user_id)
                session.add(row)
            row.preferences = dict(preferences or {})
            row.instructions = instructions or None
            row.updated_at = self.now()
            return self._profile(row)

    @traced("update_profile")
    async def update_profile(
        self,
        *,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        preferences: Mapping[str, str | None] | None = None,
        instructions: str | None | Unset = UNSET,
    ) -> UserProfile:
        """Change part of the user's profile: the given preferences (a `None` value removes that key) and, if
        given, the instructions (`None` removes them). Creates the profile if needed.
        """  # noqa: D205
        changes = dict(preferences or {})
        _check(changes, instructions)
        tenant = tenant_id or self.tenant_id
        async with self._session() as session:
            await self._ensure_user(session, tenant, user_id)
            row = await session.get(UserProfileRow, (tenant, user_id))
            if row is None:
                row = UserProfileRow(tenant_id=tenant, user_id=user_id, preferences={}, instructions=None)
                session.add(row)
            merged = {str(k): str(v) for k, v in (row.preferences or {}).items()}
            for key, value in changes.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            row.preferences = merged  # a new dict, so the JSON column is seen as changed
            if not isinstance(instructions, Unset):
                row.instructions = instructions or None
            row.updated_at = self.now()
            return self._profile(row)

    @traced("delete_profile")
    async def delete_profile(self, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None) -> bool:
        """Delete the user's profile; returns whether there was one."""
        async with self._session() as session:
            row = await session.get(UserProfileRow, (tenant_id or self.tenant_id, user_id))
            if row is None:
                return False
            await session.delete(row)
            return True
