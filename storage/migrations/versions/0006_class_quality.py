"""class quality: confusion matrices per model and split, calibration of classify models

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("temperature", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("ece_before", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("ece_after", sa.Float(), nullable=True))
    op.create_table(
        "model_confusions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("dataset_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("matrix", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_confusions_model_version_id", "model_confusions", ["model_version_id"])


def downgrade() -> None:
    op.drop_index("ix_model_confusions_model_version_id", table_name="model_confusions")
    op.drop_table("model_confusions")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("ece_after")
        batch_op.drop_column("ece_before")
        batch_op.drop_column("temperature")
