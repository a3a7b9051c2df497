"""Program membership: the campaign lists the sync made, agreed memberships, pending changes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create program_list, program_membership and membership_pending."""
    op.create_table(
        "program_list",
        sa.Column("program_id", sa.BigInteger(), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("person_entity", sa.String(16), nullable=False),
        sa.Column("list_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("program_id", "campaign_id", "person_entity", name="pk_program_list"),
    )
    op.create_table(
        "program_membership",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("program_id", sa.BigInteger(), nullable=False),
        sa.Column("marketo_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("person_entity", sa.String(16), nullable=False),
        sa.Column("dynamics_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(128), nullable=True),
        sa.Column("list_id", sa.String(64), nullable=True),
        sa.Column("listmember_id", sa.String(64), nullable=True),
        sa.Column("in_list", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_program_membership"),
        sa.UniqueConstraint("program_id", "marketo_id", name="uq_program_membership_program_id_marketo_id"),
    )
    op.create_index("ix_program_membership_listmember_id", "program_membership", ["listmember_id"])
    op.create_index(
        "ix_program_membership_campaign_id_dynamics_id", "program_membership", ["campaign_id", "dynamics_id"]
    )
    op.create_table(
        "membership_pending",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("program_id", sa.BigInteger(), nullable=False),
        sa.Column("person_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(128), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_membership_pending"),
        sa.UniqueConstraint(
            "direction",
            "program_id",
            "person_id",
            name="uq_membership_pending_direction_program_id_person_id",
        ),
    )


def downgrade() -> None:
    """Drop the three tables."""
    op.drop_table("membership_pending")
    op.drop_index("ix_program_membership_campaign_id_dynamics_id", table_name="program_membership")
    op.drop_index("ix_program_membership_listmember_id", table_name="program_membership")
    op.drop_table("program_membership")
    op.drop_table("program_list")
