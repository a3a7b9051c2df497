"""Remember which Dataverse organization and Marketo instance the state belongs to (§6.6).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create sync_identity."""
    op.create_table(
        "sync_identity",
        sa.Column("system", sa.String(16), nullable=False),
        sa.Column("identity", sa.String(255), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("system", name="pk_sync_identity"),
    )


def downgrade() -> None:
    """Drop sync_identity."""
    op.drop_table("sync_identity")
