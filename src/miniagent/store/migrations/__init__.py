"""Alembic migrations of the store, shipped in the package (`miniagent migrate`)."""
