"""Tables of what a model shows about the labels (issue 16): its confusion matrix on each validation split.

Imported at the end of `storage.tables`, so `Base.metadata` (Alembic, `create_all`) always holds them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from storage.clock import utcnow
from storage.tables import Base


class ModelConfusion(Base):
    """One model's confusion matrix on one validation split: `matrix[i][j]` counts what is truly `classes[i]`
    and was predicted `classes[j]` (rows true, columns predicted). Detect adds a last "background" class:
    its row holds boxes found where no object is labelled, its column labelled objects the model missed."""

    __tablename__ = "model_confusions"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(64))
    classes: Mapped[list] = mapped_column(JSON)
    matrix: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
