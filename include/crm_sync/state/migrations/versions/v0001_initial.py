"""Initial state store: watermark, id_map, run_ledger, record_error, conflict_log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the five tables."""
    op.create_table(
        "watermark",
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("entity", "direction", name="pk_watermark"),
    )
    op.create_table(
        "id_map",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("dynamics_id", sa.String(64), nullable=False),
        sa.Column("marketo_id", sa.String(64), nullable=True),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("person_type", sa.String(16), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("filter_value", sa.Boolean(), nullable=True),
        sa.Column("last_hash_d2m", sa.BigInteger(), nullable=True),
        sa.Column("last_hash_m2d", sa.BigInteger(), nullable=True),
        sa.Column("field_hashes", sa.JSON(), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_id_map"),
        sa.UniqueConstraint("entity", "dynamics_id", name="uq_id_map_entity_dynamics_id"),
        sa.UniqueConstraint("entity", "marketo_id", name="uq_id_map_entity_marketo_id"),
    )
    op.create_index("ix_id_map_entity_email", "id_map", ["entity", "email"])
    op.create_table(
        "run_ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in ("extracted", "transformed", "loaded", "skipped", "failed", "conflicts", "api_calls")
        ),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_run_ledger"),
        sa.UniqueConstraint("run_id", "entity", "direction", name="uq_run_ledger_run_id_entity_direction"),
    )
    op.create_index("ix_run_ledger_entity_started_at", "run_ledger", ["entity", "started_at"])
    op.create_table(
        "record_error",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("source_id", sa.String(64), nullable=False),
        sa.Column("field", sa.String(128), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("payload_ref", sa.Text(), nullable=True),
        sa.Column("last_run_id", sa.String(250), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("parked", sa.Boolean(), nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_record_error"),
        sa.UniqueConstraint(
            "entity",
            "direction",
            "source_id",
            "field",
            "code",
            name="uq_record_error_entity_direction_source_id_field_code",
        ),
    )
    op.create_index("ix_record_error_due", "record_error", ["resolved_at", "parked", "next_attempt_at"])
    op.create_table(
        "conflict_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("record_key", sa.String(64), nullable=False),
        sa.Column("field", sa.String(128), nullable=False),
        sa.Column("marketo_value", sa.Text(), nullable=True),
        sa.Column("dynamics_value", sa.Text(), nullable=True),
        sa.Column("winner", sa.String(16), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conflict_log"),
        sa.UniqueConstraint(
            "run_id", "entity", "record_key", "field", name="uq_conflict_log_run_id_entity_record_key_field"
        ),
    )


def downgrade() -> None:
    """Drop the five tables."""
    for table in ("conflict_log", "record_error", "run_ledger", "id_map", "watermark"):
        op.drop_table(table)
