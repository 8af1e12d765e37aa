"""SQLAlchemy 2.0 models. Named `tables` so that "model" only ever means an ML model."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from storage.clock import utcnow
from storage.names import from_db, shown, to_db


class Base(DeclarativeBase):
    pass


class FsText(TypeDecorator):
    """A path or file name as `os` gives it, bytes that are not UTF-8 included (see storage.names)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else to_db(value)

    def process_result_value(self, value, dialect):
        return None if value is None else from_db(value)


class ShownText(TypeDecorator):
    """Text for people that may quote a file name: a byte that is not UTF-8 is stored as U+FFFD."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else shown(value)


class FileState(str, enum.Enum):
    """Where a dropped file stands. Final: processed, quarantined. Waiting: the awaiting_* states."""

    pending = "pending"  # registered, not finished yet
    processed = "processed"
    quarantined = "quarantined"
    awaiting_model = "awaiting_model"
    awaiting_partner = "awaiting_partner"
    requeued = "requeued"  # history: a quarantined file sent back; its next life is a new row


CORRECTION_FOLDER = "correction"  # files.folder of a label a review workbook row made (see Correction)


class File(Base):
    """One file that appeared in a drop folder, from registration to its final place."""

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(primary_key=True)
    # inbox | labeled | CORRECTION_FOLDER (no dropped file: the archived image as a review workbook row labelled it)
    folder: Mapped[str] = mapped_column(String(16))
    source_path: Mapped[str] = mapped_column(FsText)  # relative to the drop folder, as dropped
    original_name: Mapped[str] = mapped_column(FsText)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(32), default=FileState.pending.value, index=True)
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(ShownText)
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("files.id"))
    # Where the file is now and where it goes, both relative to home. The destination is decided and
    # committed before the move; a restart finishes every row whose location differs from it.
    location: Mapped[str | None] = mapped_column(FsText)
    final_path: Mapped[str | None] = mapped_column(FsText, unique=True)
    moved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Work claims, for several daemons on one inbox: the worker registering or processing a file holds it until
    # the claim expires; a dead worker's claims are taken over.
    claimed_by: Mapped[int | None] = mapped_column(Integer)
    claim_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The image's 64-bit pHash (signed, as BIGINT stores it) and its four 16-bit bands, each indexed: a hash a
    # few bits away shares a band or nearly (pipeline.images.phash), so a lookup never scans every hash.
    phash: Mapped[int | None] = mapped_column(BigInteger)
    phash_b0: Mapped[int | None] = mapped_column(Integer, index=True)
    phash_b1: Mapped[int | None] = mapped_column(Integer, index=True)
    phash_b2: Mapped[int | None] = mapped_column(Integer, index=True)
    phash_b3: Mapped[int | None] = mapped_column(Integer, index=True)
    # An inbox image that looks like an earlier one (watch.near_duplicate_bits): which, and how many bits apart.
    looks_like: Mapped[int | None] = mapped_column(ForeignKey("files.id"))
    looks_like_bits: Mapped[int | None] = mapped_column(Integer)

    predictions: Mapped[list[Prediction]] = relationship(back_populates="file")

    __table_args__ = (
        Index("ix_files_folder_source", "folder", "source_path"),
        # One live row per file in a drop folder: two workers registering the same file cannot both win.
        Index("ux_files_live_location", "location", unique=True,
              sqlite_where=text("moved_at IS NULL"), postgresql_where=text("moved_at IS NULL")),
    )


class Prediction(Base):
    """The result of one inference on one file."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    model_version: Mapped[str | None] = mapped_column(String(64))
    backend: Mapped[str | None] = mapped_column(String(16))
    imgsz: Mapped[int | None] = mapped_column(Integer)
    predicted_class: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float | None] = mapped_column(Float)
    top5: Mapped[list | None] = mapped_column(JSON)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    decode_ms: Mapped[float | None] = mapped_column(Float)
    infer_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    file: Mapped[File] = relationship(back_populates="predictions")
    detections: Mapped[list[Detection]] = relationship(back_populates="prediction")


class Detection(Base):
    """One box of a detect-task prediction, normalised xyxy."""

    __tablename__ = "detections"

    id: Mapped[int] = mapped_column(primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"), index=True)
    class_name: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)

    prediction: Mapped[Prediction] = relationship(back_populates="detections")


class ClassName(Base):
    """The class registry: names are the identity, `position` is the dataset's class id."""

    __tablename__ = "classes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    position: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Label(Base):
    """One labelled box (or a whole-image class for classification) from a labelled drop."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    class_name: Mapped[str] = mapped_column(Text)
    cx: Mapped[float | None] = mapped_column(Float)
    cy: Mapped[float | None] = mapped_column(Float)
    w: Mapped[float | None] = mapped_column(Float)
    h: Mapped[float | None] = mapped_column(Float)
    source_format: Mapped[str] = mapped_column(String(16))  # yolo | voc | folder
    split: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    replaced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ClassList(Base):
    """The names of one classes.txt, by the folder it came in: YOLO ids from that folder map through it, even
    for labels that arrive after the classes.txt itself was archived."""

    __tablename__ = "class_lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    folder: Mapped[str] = mapped_column(FsText, index=True)  # relative to labeled/; "" for labeled/ itself
    names: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Sample(Base):
    """One labelled image as dropped: the image file, its label file, its split. A later drop of the same image
    content replaces it (`replaced_at`); its Label rows share `image_file_id` as their `file_id`."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), unique=True)
    label_file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"))
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    source_format: Mapped[str] = mapped_column(String(16))  # yolo | voc | folder
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    split: Mapped[str | None] = mapped_column(String(8))  # set by the dataset build (val_fraction lives there)
    boxes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    replaced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LabelEvent(Base):
    """Something about the labels the user should hear of: a class added, duplicate lines dropped, an image
    re-labelled. The report's "Label issues" sheet reads these."""

    __tablename__ = "label_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # class_added | duplicate_lines | relabelled
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"))
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(ShownText)
    data: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetVersion(Base):
    """One immutable snapshot of the managed dataset, with what was measured and done while building it."""

    __tablename__ = "dataset_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text)  # the snapshot folder, relative to home
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    classes: Mapped[list] = mapped_column(JSON)
    train_images: Mapped[int] = mapped_column(Integer, default=0)
    val_images: Mapped[int] = mapped_column(Integer, default=0)
    train_entries: Mapped[int] = mapped_column(Integer, default=0)  # with oversampling, > train_images
    boxes: Mapped[int] = mapped_column(Integer, default=0)
    stats: Mapped[dict | None] = mapped_column(JSON)  # imbalance, ambiguity, balance
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


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


class Report(Base):
    """An Excel workbook that was written."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Worker(Base):
    """A running daemon's heartbeat, so `status` can tell whether one is alive without guessing."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16), default="all")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_rescan_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    queue_depth: Mapped[int] = mapped_column(Integer, default=0)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Correction(Base):
    """One filled row of a review workbook dropped into labeled/, recorded once per workbook content and row id.

    `outcome`: labelled | unchanged | skipped | review_copy | unknown_class | unknown_row_id | image_gone |
    conflicting_rows (pipeline.review.layout.OUTCOMES says what each means). A label it made is a Sample on its own
    files row (folder "correction", the archived image's location), so re-corrections replace older labels the way
    re-drops do."""

    __tablename__ = "corrections"

    id: Mapped[int] = mapped_column(primary_key=True)
    workbook_file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    workbook_sha256: Mapped[str] = mapped_column(String(64))
    workbook_name: Mapped[str] = mapped_column(ShownText)
    sheet_row: Mapped[int] = mapped_column(Integer)  # the row number a person sees in the sheet
    row_id: Mapped[str] = mapped_column(String(64))  # as written in the id column: "<file id>-<sha256[:12]>"
    image_file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"), index=True)  # the inbox image
    class_name: Mapped[str | None] = mapped_column(ShownText)  # what the person chose, as typed
    outcome: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str | None] = mapped_column(ShownText)
    label_file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"))  # the Sample's files row
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        # Exactly once: the same workbook content dropped again (or by two workers at once) records nothing new.
        Index("ux_corrections_workbook_row", "workbook_sha256", "row_id", unique=True),
    )


class Lease(Base):
    """A named job only one worker may do at a time (writing reports), held until `expires_at`."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


import storage.tables_quality  # noqa: E402,F401 - its tables join Base.metadata wherever tables is imported
# The label-health tables live in their own module (this one would pass ~400 lines); importing it here puts them
# in Base.metadata for every user of Base (Alembic, the schema test).
from storage.tables_audit import AuditImage, ClassOverlap, LabelAudit  # noqa: E402,F401
