"""near-duplicates: a perceptual hash per image, its four indexed bands, and which earlier file an image looks like

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BANDS = ("phash_b0", "phash_b1", "phash_b2", "phash_b3")


def upgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phash", sa.BigInteger(), nullable=True))
        for band in BANDS:
            batch_op.add_column(sa.Column(band, sa.Integer(), nullable=True))
            batch_op.create_index(f"ix_files_{band}", [band], unique=False)
        batch_op.add_column(sa.Column("looks_like", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("looks_like_bits", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_files_looks_like", "files", ["looks_like"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("looks_like_bits")
        batch_op.drop_column("looks_like")
        for band in BANDS:
            batch_op.drop_index(f"ix_files_{band}")
            batch_op.drop_column(band)
        batch_op.drop_column("phash")
