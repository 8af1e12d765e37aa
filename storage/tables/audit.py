"""The label-health tables: what one audit (`coverwatch audit`, pipeline.training.audit) found.

    label_audits      one row per finished audit: folds, images, the dataset's label health score, class ranking
    audit_images      one row per labelled image: given and suggested class, cleanlab's quality score, flagged
    class_overlaps    one row per class pair that the out-of-sample predictions mix up, with a recommendation
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.clock import utcnow
from storage.tables.base import Base, FsText


class LabelAudit(Base):
    """One audit: K-fold out-of-sample predictions over one dataset snapshot, judged by cleanlab."""

    __tablename__ = "label_audits"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id"), index=True)
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    task: Mapped[str] = mapped_column(String(16))
    folds: Mapped[int] = mapped_column(Integer)
    epochs: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer)
    flagged: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list] = mapped_column(JSON)
    health_score: Mapped[float] = mapped_column(Float)  # cleanlab's overall_label_health_score, 0..1
    # Out-of-sample top-1 (suggested == given) and the share of the largest class: fold models no better than
    # always answering the largest class learned nothing, and their findings say little about the labels.
    accuracy: Mapped[float | None] = mapped_column(Float)
    majority_share: Mapped[float | None] = mapped_column(Float)
    class_ranking: Mapped[list | None] = mapped_column(JSON)  # rank_classes_by_label_quality, worst first
    review_folder: Mapped[str | None] = mapped_column(FsText)  # where the flagged images were copied, under home
    seconds: Mapped[float | None] = mapped_column(Float)  # wall time of the folds and the analysis
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditImage(Base):
    """One labelled image of an audit: the label it has, what the model that never saw it says."""

    __tablename__ = "audit_images"

    id: Mapped[int] = mapped_column(primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("label_audits.id"), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"))
    fold: Mapped[int] = mapped_column(Integer)  # 1-based: the fold whose model predicted it (it trained without)
    given_class: Mapped[str] = mapped_column(Text)
    suggested_class: Mapped[str] = mapped_column(Text)  # argmax of the out-of-sample probabilities
    quality: Mapped[float] = mapped_column(Float)  # cleanlab.rank.get_label_quality_scores: low = likely wrong
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)  # cleanlab.filter.find_label_issues
    probabilities: Mapped[list] = mapped_column(JSON)  # per class, in the audit's class order
    review_path: Mapped[str | None] = mapped_column(FsText)  # its copy in review/, relative to home


class ClassOverlap(Base):
    """Two classes the out-of-sample predictions mix up (cleanlab.dataset.find_overlapping_classes)."""

    __tablename__ = "class_overlaps"

    id: Mapped[int] = mapped_column(primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("label_audits.id"), index=True)
    rank: Mapped[int] = mapped_column(Integer)  # 1: the most overlapping pair
    class_a: Mapped[str] = mapped_column(Text)
    class_b: Mapped[str] = mapped_column(Text)
    confused: Mapped[int] = mapped_column(Integer)  # images given one of the two whose suggestion is the other
    overlapping: Mapped[int] = mapped_column(Integer)  # cleanlab's "Num Overlapping Examples"
    overlap: Mapped[float] = mapped_column(Float)  # cleanlab's joint probability: the share of all images
    share: Mapped[float] = mapped_column(Float)  # overlapping / images of both classes
    recommendation: Mapped[str] = mapped_column(Text)
