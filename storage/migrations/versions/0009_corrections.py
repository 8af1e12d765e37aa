"""corrections: the filled rows of review workbooks dropped into labeled/

Revision ID: 0009
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workbook_file_id", sa.Integer(), nullable=False),
        sa.Column("workbook_sha256", sa.String(length=64), nullable=False),
        sa.Column("workbook_name", sa.Text(), nullable=False),
        sa.Column("sheet_row", sa.Integer(), nullable=False),
        sa.Column("row_id", sa.String(length=64), nullable=False),
        sa.Column("image_file_id", sa.Integer(), nullable=True),
        sa.Column("class_name", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("label_file_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["workbook_file_id"], ["files.id"]),
        sa.ForeignKeyConstraint(["image_file_id"], ["files.id"]),
        sa.ForeignKeyConstraint(["label_file_id"], ["files.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_corrections_workbook_file_id", "corrections", ["workbook_file_id"])
    op.create_index("ix_corrections_image_file_id", "corrections", ["image_file_id"])
    op.create_index("ix_corrections_outcome", "corrections", ["outcome"])
    op.create_index("ux_corrections_workbook_row", "corrections", ["workbook_sha256", "row_id"], unique=True)


def downgrade() -> None:
    op.drop_table("corrections")
