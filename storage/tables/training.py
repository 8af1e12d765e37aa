"""Training: runs and their attempts, the model versions they made, and each version's figures."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.clock import utcnow
from storage.tables.base import Base


class ModelVersion(Base):
    """A trained (or configured) model in the registry."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    task: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="candidate")  # candidate|champion|rejected|retired
    classes: Mapped[list | None] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why it was promoted or rejected, with both figures on the same validation split.
    decision: Mapped[str | None] = mapped_column(Text)
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # classify: softmax(log p / temperature) is the calibrated confidence (pipeline.inference.calibration);
    # ece_*: its expected calibration error on the validation split before and after. None: not calibrated.
    temperature: Mapped[float | None] = mapped_column(Float)
    ece_before: Mapped[float | None] = mapped_column(Float)
    ece_after: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        # One champion, whatever several daemons or a CLI do at the same moment.
        Index("ux_model_versions_champion", "state", unique=True,
              sqlite_where=text("state = 'champion'"), postgresql_where=text("state = 'champion'")),
    )


class TrainingRun(Base):
    """One requested training; the queue lives here so a restart neither loses nor repeats a run."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)  # queued|running|done|failed
    # train: a model is trained and judged; audit: K short fold runs give every labelled image out-of-sample
    # predictions (pipeline.training.audit). Each kind has its own queue of one queued and one running run.
    kind: Mapped[str] = mapped_column(String(16), default="train", server_default="train")
    trigger: Mapped[str] = mapped_column(String(32))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    epoch: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[dict | None] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[str | None] = mapped_column(String(64))  # its folder under models/
    losses: Mapped[dict | None] = mapped_column(JSON)  # the last epoch's mean training losses
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    host: Mapped[str | None] = mapped_column(String(255))  # where the training process runs
    pid: Mapped[int | None] = mapped_column(Integer)
    resume_path: Mapped[str | None] = mapped_column(Text)  # last.pt an interrupted run resumed from
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    fold: Mapped[int | None] = mapped_column(Integer)  # an audit's fold in progress (1-based) ...
    folds: Mapped[int | None] = mapped_column(Integer)  # ... of this many

    attempts: Mapped[list[TrainingAttempt]] = relationship(back_populates="run", order_by="TrainingAttempt.n")

    __table_args__ = (
        # At most one queued and one running run of each kind: requests merge into the queued one, even across
        # processes.
        Index("ux_training_runs_active", "kind", "state", unique=True,
              sqlite_where=text("state IN ('queued', 'running')"),
              postgresql_where=text("state IN ('queued', 'running')")),
    )


class TrainingAttempt(Base):
    """One try of a training run: the out-of-memory back-off makes several, each with its settings and reason."""

    __tablename__ = "training_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id"), index=True)
    n: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(Text)
    imgsz: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)  # -1: Ultralytics' auto-batch
    resume: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str] = mapped_column(String(16), default="running")  # running|ok|oom|failed|interrupted
    reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    run: Mapped[TrainingRun] = relationship(back_populates="attempts")


class ModelMetric(Base):
    """One evaluation figure set of a model version: overall (class_name NULL) or for one class."""

    __tablename__ = "model_metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(64))
    class_name: Mapped[str | None] = mapped_column(Text)
    images: Mapped[int | None] = mapped_column(Integer)
    instances: Mapped[int | None] = mapped_column(Integer)
    precision: Mapped[float | None] = mapped_column(Float)
    recall: Mapped[float | None] = mapped_column(Float)
    map50: Mapped[float | None] = mapped_column(Float)
    map50_95: Mapped[float | None] = mapped_column(Float)
    top1: Mapped[float | None] = mapped_column(Float)
    top5: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


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
