"""The files of the drop folders and what became of them: files, predictions, boxes; and the service's own
rows: reports written, workers alive, leases held."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.clock import utcnow
from storage.tables.base import Base, FsText, ShownText


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


class Lease(Base):
    """A named job only one worker may do at a time (writing reports), held until `expires_at`."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
