"""label health: audit runs (kind, fold progress) and what an audit found per image and per class pair

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ACTIVE = "state IN ('queued', 'running')"


def upgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="train", nullable=False))
        batch_op.add_column(sa.Column("fold", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("folds", sa.Integer(), nullable=True))
        # One queued and one running run of each kind: a training request never merges into an audit.
        batch_op.drop_index("ux_training_runs_active")
        batch_op.create_index("ux_training_runs_active", ["kind", "state"], unique=True,
                              sqlite_where=sa.text(ACTIVE), postgresql_where=sa.text(ACTIVE))
    op.create_table(
        "label_audits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("dataset_version_id", sa.Integer(), nullable=True),
        sa.Column("task", sa.String(length=16), nullable=False),
        sa.Column("folds", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Integer(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("health_score", sa.Float(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("majority_share", sa.Float(), nullable=True),
        sa.Column("class_ranking", sa.JSON(), nullable=True),
        sa.Column("review_folder", sa.Text(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["training_runs.id"]),
        sa.ForeignKeyConstraint(["dataset_version_id"], ["dataset_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_label_audits_run_id", "label_audits", ["run_id"])
    op.create_table(
        "audit_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("audit_id", sa.Integer(), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=True),
        sa.Column("fold", sa.Integer(), nullable=False),
        sa.Column("given_class", sa.Text(), nullable=False),
        sa.Column("suggested_class", sa.Text(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("review_path", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["audit_id"], ["label_audits.id"]),
        sa.ForeignKeyConstraint(["file_id"], ["files.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_images_audit_id", "audit_images", ["audit_id"])
    op.create_table(
        "class_overlaps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("audit_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("class_a", sa.Text(), nullable=False),
        sa.Column("class_b", sa.Text(), nullable=False),
        sa.Column("confused", sa.Integer(), nullable=False),
        sa.Column("overlapping", sa.Integer(), nullable=False),
        sa.Column("overlap", sa.Float(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("recommendation", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["audit_id"], ["label_audits.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_class_overlaps_audit_id", "class_overlaps", ["audit_id"])


def downgrade() -> None:
    op.drop_table("class_overlaps")
    op.drop_table("audit_images")
    op.drop_table("label_audits")
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_index("ux_training_runs_active")
        batch_op.create_index("ux_training_runs_active", ["state"], unique=True,
                              sqlite_where=sa.text(ACTIVE), postgresql_where=sa.text(ACTIVE))
        batch_op.drop_column("folds")
        batch_op.drop_column("fold")
        batch_op.drop_column("kind")
