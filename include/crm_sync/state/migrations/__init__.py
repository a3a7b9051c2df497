"""Alembic environment and revisions of the state store (a package so wheels ship it)."""
