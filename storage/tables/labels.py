"""Labels: the class registry, labelled samples and their label rows, label events, the dataset snapshots, and
corrections read from review workbooks."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.clock import utcnow
from storage.tables.base import Base, FsText, ShownText


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
