"""The store fixtures, so working memory is tested on stored threads against SQLite and PostgreSQL."""

from __future__ import annotations

from ..store.conftest import pg_server, store, store_url

__all__ = ["pg_server", "store", "store_url"]
