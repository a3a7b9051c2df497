"""Reconciliation reports: one row per run and one per finding.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create reconcile_run and reconcile_difference."""
    op.create_table(
        "reconcile_run",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("entities", sa.JSON(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("csv_path", sa.Text(), nullable=True),
        sa.Column("html_path", sa.Text(), nullable=True),
        sa.Column("repaired", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reconcile_run"),
        sa.UniqueConstraint("run_id", name="uq_reconcile_run_run_id"),
    )
    op.create_table(
        "reconcile_difference",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reconcile_run_id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("dynamics_id", sa.String(64), nullable=True),
        sa.Column("marketo_id", sa.String(64), nullable=True),
        sa.Column("field", sa.String(128), nullable=True),
        sa.Column("dynamics_value", sa.Text(), nullable=True),
        sa.Column("marketo_value", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["reconcile_run_id"],
            ["reconcile_run.id"],
            name="fk_reconcile_difference_reconcile_run_id_reconcile_run",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_reconcile_difference"),
    )
    op.create_index(
        "ix_reconcile_difference_run_entity", "reconcile_difference", ["reconcile_run_id", "entity"]
    )


def downgrade() -> None:
    """Drop the reconciliation tables."""
    op.drop_index("ix_reconcile_difference_run_entity", table_name="reconcile_difference")
    op.drop_table("reconcile_difference")
    op.drop_table("reconcile_run")
