"""Visible rows: what the application user saw in the last full read of each entity's table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create visible_rows."""
    op.create_table(
        "visible_rows",
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("entity", name="pk_visible_rows"),
    )


def downgrade() -> None:
    """Drop visible_rows."""
    op.drop_table("visible_rows")
