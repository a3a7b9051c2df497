"""API calls per run stage (quota budgeting) and accepted API schemas (drift check).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create api_call_log and schema_snapshot."""
    op.create_table(
        "api_call_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(128), nullable=False),
        sa.Column("system", sa.String(16), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_call_log"),
        sa.UniqueConstraint(
            "run_id", "entity", "stage", "system", name="uq_api_call_log_run_id_entity_stage_system"
        ),
    )
    op.create_index("ix_api_call_log_system_at", "api_call_log", ["system", "at"])
    op.create_table(
        "schema_snapshot",
        sa.Column("system", sa.String(16), nullable=False),
        sa.Column("object", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("read_on", sa.String(10), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("system", "object", name="pk_schema_snapshot"),
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("schema_snapshot")
    op.drop_index("ix_api_call_log_system_at", table_name="api_call_log")
    op.drop_table("api_call_log")
