"""training: run progress and process, attempts (out-of-memory back-off), per-class model metrics, one champion

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ACTIVE = "state IN ('queued', 'running')"
CHAMPION = "state = 'champion'"


def upgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("losses", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("eta_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("resume_path", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("dataset_version_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_foreign_key("fk_training_runs_dataset_version_id", "dataset_versions",
                                    ["dataset_version_id"], ["id"])
        batch_op.create_index("ux_training_runs_active", ["state"], unique=True,
                              sqlite_where=sa.text(ACTIVE), postgresql_where=sa.text(ACTIVE))
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decision", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("dataset_fingerprint", sa.String(length=64), nullable=True))
        batch_op.create_index("ux_model_versions_champion", ["state"], unique=True,
                              sqlite_where=sa.text(CHAMPION), postgresql_where=sa.text(CHAMPION))
    op.create_table(
        "training_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("imgsz", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("resume", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["training_runs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("training_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_attempts_run_id"), ["run_id"], unique=False)
    op.create_table(
        "model_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("dataset_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("class_name", sa.Text(), nullable=True),
        sa.Column("images", sa.Integer(), nullable=True),
        sa.Column("instances", sa.Integer(), nullable=True),
        sa.Column("precision", sa.Float(), nullable=True),
        sa.Column("recall", sa.Float(), nullable=True),
        sa.Column("map50", sa.Float(), nullable=True),
        sa.Column("map50_95", sa.Float(), nullable=True),
        sa.Column("top1", sa.Float(), nullable=True),
        sa.Column("top5", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("model_metrics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_metrics_model_version_id"), ["model_version_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_metrics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_metrics_model_version_id"))
    op.drop_table("model_metrics")
    with op.batch_alter_table("training_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_attempts_run_id"))
    op.drop_table("training_attempts")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index("ux_model_versions_champion")
        batch_op.drop_column("dataset_fingerprint")
        batch_op.drop_column("decision")
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_index("ux_training_runs_active")
        batch_op.drop_constraint("fk_training_runs_dataset_version_id", type_="foreignkey")
        for col in ("updated_at", "dataset_version_id", "resume_path", "pid", "host", "eta_seconds", "losses",
                    "version"):
            batch_op.drop_column(col)
