"""Consent log: every opt-out and re-subscribe the sync saw, with both sides' values.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create consent_log."""
    op.create_table(
        "consent_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("record_key", sa.String(64), nullable=False),
        sa.Column("field", sa.String(128), nullable=False),
        sa.Column("marketo_value", sa.Text(), nullable=True),
        sa.Column("dynamics_value", sa.Text(), nullable=True),
        sa.Column("changed_in", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_consent_log"),
        sa.UniqueConstraint(
            "run_id", "entity", "record_key", "field", name="uq_consent_log_run_id_entity_record_key_field"
        ),
    )


def downgrade() -> None:
    """Drop consent_log."""
    op.drop_table("consent_log")
