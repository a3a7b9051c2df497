"""Alembic revisions of the state store."""
