"""Change backlog (what the last peek saw and no run has committed yet) and run latency figures.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create change_backlog; add the latency columns to run_ledger."""
    op.create_table(
        "change_backlog",
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("pending", sa.Integer(), nullable=False),
        sa.Column("oldest_change_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("newest_change_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("peeked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("entity", "direction", name="pk_change_backlog"),
    )
    with op.batch_alter_table("run_ledger") as batch:
        batch.add_column(sa.Column("latency_p50_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("latency_p95_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("latency_max_s", sa.Float(), nullable=True))


def downgrade() -> None:
    """Drop change_backlog and the latency columns."""
    with op.batch_alter_table("run_ledger") as batch:
        batch.drop_column("latency_max_s")
        batch.drop_column("latency_p95_s")
        batch.drop_column("latency_p50_s")
    op.drop_table("change_backlog")
