"""Handed-over links keep their Marketo id: one Marketo id per entity among the other links only.

A merged record's link names the survivor's person beside the survivor's own link (both Dynamics
ids resolve to the one person, issue 22), so ``(entity, marketo_id)`` is unique only where
``state`` is not ``converted`` or ``merged`` (a partial unique index on both backends).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HELD = "state NOT IN ('converted', 'merged')"


def upgrade() -> None:
    """Replace the unique constraint with a partial unique index."""
    with op.batch_alter_table("id_map") as batch:
        batch.drop_constraint("uq_id_map_entity_marketo_id", type_="unique")
    op.create_index(
        "uq_id_map_entity_marketo_id_held",
        "id_map",
        ["entity", "marketo_id"],
        unique=True,
        sqlite_where=sa.text(HELD),
        postgresql_where=sa.text(HELD),
    )


def downgrade() -> None:
    """Back to the plain unique constraint (fails while two links share a Marketo id)."""
    op.drop_index("uq_id_map_entity_marketo_id_held", table_name="id_map")
    with op.batch_alter_table("id_map") as batch:
        batch.create_unique_constraint("uq_id_map_entity_marketo_id", ["entity", "marketo_id"])
