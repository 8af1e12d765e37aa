"""The config's keys: one frozen pydantic section per YAML mapping, their defaults and checks, and the
Ultralytics model names each task accepts. Reading the file and its error lines are in `watcher.config`."""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

log = logging.getLogger("watcher.config")

STRIDE = 32
CONFIG_ENV = "COVERWATCH_CONFIG"
DEFAULT_CONFIG_NAME = "coverwatch.yaml"

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0, strict=True)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _round_to_stride(value: int | None, key: str) -> int | None:
    if value is not None and value % STRIDE:
        rounded = (value // STRIDE + 1) * STRIDE
        log.warning("%s: %d is not a multiple of %d (the model's stride); using %d", key, value, STRIDE, rounded)
        return rounded
    return value


class WatchConfig(_Section):
    settle_seconds: NonNegFloat = 1.0
    rescan_seconds: PositiveFloat = 60.0
    polling: Literal["auto", True, False] = "auto"
    poll_interval_seconds: PositiveFloat = 1.0
    pair_timeout_seconds: NonNegFloat = 30.0
    claim_seconds: PositiveFloat = 120.0
    max_bytes: PositiveInt = 50 * 1024 * 1024
    max_pixels: PositiveInt = 89_478_485  # Pillow's own bomb threshold
    # A 1x80000 PNG is 390 bytes; classify's resize of the short side to imgsz would make it gigabytes.
    max_aspect: Annotated[float, Field(ge=1)] = 20.0
    max_boxes: PositiveInt = 1000  # per label file; more is too_many_boxes (pipeline.labels.formats)
    # Perceptual-hash bits two images may differ in and still be one cover (pipeline.images.phash): on coco128,
    # re-saved, JPEG q60 and 0.5x copies differ by at most 2, 2% crops by 6, distinct photos by 16 or more. 0: off.
    near_duplicate_bits: Annotated[int, Field(ge=0, le=11, strict=True)] = 6  # le: pipeline.images.phash.MAX_BITS


def _auto_is_unset(v: Any) -> Any:
    """`auto` (or no value) for a task-dependent key: Config fills in the task's default."""
    return None if v == "auto" else v


class ModelConfig(_Section):
    weights: str | None = None  # None/auto: TASK_DEFAULTS[task]
    imgsz: PositiveInt | None = None
    device: str = "auto"
    backend: Literal["auto", "torch", "onnx"] = "auto"
    batch: PositiveInt = 16
    conf: Annotated[float, Field(ge=0, le=1)] = 0.25
    review_below: Annotated[float, Field(ge=0, le=1)] = 0.4

    _auto = field_validator("weights", "imgsz", mode="before")(_auto_is_unset)

    @field_validator("imgsz")
    @classmethod
    def _stride(cls, v: int | None) -> int | None:
        return _round_to_stride(v, "model.imgsz")


class TrainingConfig(_Section):
    """The one place the `training:` keys and their defaults are declared; `training_settings` and
    `dataset_options` hand them to pipeline as frozen values."""

    base: str | None = None  # None/auto: TASK_DEFAULTS[task]
    epochs: PositiveInt = 100
    imgsz: PositiveInt | None = None
    batch: PositiveInt | Literal["auto"] = "auto"
    patience: Annotated[int, Field(ge=0, strict=True)] = 20
    min_new_labels: PositiveInt = 50
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    balance: Literal["none", "oversample"] = "none"
    imbalance_warn_ratio: Annotated[float, Field(ge=1)] = 5.0
    ambiguity_iou: Annotated[float, Field(gt=0, lt=1)] = 0.7
    max_repeat: PositiveInt = 4
    conflicts: Literal["exclude", "latest"] = "exclude"
    device: str | int | list[int] = "auto"
    at: str | None = None
    promote_min_delta: NonNegFloat = 0.0
    max_class_drop: Annotated[float, Field(ge=0, le=1)] = 0.05
    gate_min_images: Annotated[int, Field(ge=0, strict=True)] = 10
    reclassify_days: PositiveInt | None = None
    oom_imgsz_steps: tuple[PositiveInt, ...] = (512, 416, 320)
    # K of the K-fold label audit queued after each training run (pipeline.training.audit); 0: none (3-5 on a
    # GPU host). `coverwatch audit` uses it too, or 3 when it is 0.
    audit_folds: Annotated[int, Field(ge=0, le=20, strict=True)] = 0
    audit_epochs: PositiveInt = 5  # each fold's run: short, it only has to tell the classes apart

    _auto = field_validator("base", "imgsz", mode="before")(_auto_is_unset)

    @field_validator("audit_folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("expected 0 (no audit) or 2 and more folds")
        return v

    @field_validator("imgsz")
    @classmethod
    def _stride(cls, v: int | None) -> int | None:
        return _round_to_stride(v, "training.imgsz")

    @field_validator("oom_imgsz_steps")
    @classmethod
    def _steps(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted({_round_to_stride(x, "training.oom_imgsz_steps") for x in v}, reverse=True))

    @field_validator("at")
    @classmethod
    def _clock(cls, v: str | None) -> str | None:
        if v is None:
            return v
        hh, sep, mm = v.partition(":")
        if not (sep and hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60 and len(mm) == 2):
            raise ValueError("expected a time of day as HH:MM")
        return f"{int(hh):02d}:{mm}"


class ReportsConfig(_Section):
    every_minutes: PositiveFloat = 60.0
    keep: PositiveInt = 48
    # A thumbnail beside the newest this many rows of Predictions and of Quarantine (0: none); made once per image
    # and cached in HOME/.thumbs/.
    thumbnails: Annotated[int, Field(ge=0, strict=True)] = 2000


class PathsConfig(_Section):
    inbox: str = "inbox"
    labeled: str = "labeled"
    archive: str = "archive"
    quarantine: str = "quarantine"
    review: str = "review"
    dataset: str = "dataset"
    models: str = "models"
    reports: str = "reports"


class MetricsConfig(_Section):
    port: Annotated[int, Field(ge=1, le=65535, strict=True)] | None = None


class Config(_Section):
    database: str = "sqlite:///coverwatch.db"
    task: Literal["detect", "classify"] = "detect"
    watch: WatchConfig = WatchConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    reports: ReportsConfig = ReportsConfig()
    paths: PathsConfig = PathsConfig()
    metrics: MetricsConfig = MetricsConfig()
    # Set by load_config: the folder every relative path is resolved against.
    home: Path = Path(".")
    config_path: Path | None = None

    @model_validator(mode="after")
    def _follow_the_task(self) -> Config:
        """Fill the task-dependent keys left unset; refuse an Ultralytics model named for another task."""
        defaults = TASK_DEFAULTS[self.task]
        for section, key in TASK_KEYS:
            value = getattr(getattr(self, section), key)
            if value is None:
                value = defaults[f"{section}.{key}"]
                object.__setattr__(self, section, getattr(self, section).model_copy(update={key: value}))
            elif isinstance(value, str):
                _check_model_task(f"{section}.{key}", value, self.task)
        return self

    def path(self, name: str) -> Path:
        """An absolute folder from the `paths` section: cfg.path("inbox")."""
        return (self.home / getattr(self.paths, name)).resolve()

    @property
    def database_url(self) -> str:
        """The URL with a relative SQLite file resolved against the config's folder."""
        prefix = "sqlite:///"
        if self.database.startswith(prefix) and not self.database.startswith(prefix + "/"):
            rest = self.database[len(prefix):]
            if rest and rest != ":memory:":
                return prefix + str((self.home / rest).resolve())
        return self.database


FOLDERS = tuple(PathsConfig.model_fields)

# The keys whose default depends on `task` (Ultralytics' own defaults: classify trains and predicts at 224).
TASK_KEYS = (("model", "weights"), ("model", "imgsz"), ("training", "base"), ("training", "imgsz"))
TASK_DEFAULTS = {
    "detect": {"model.weights": "yolo11n.pt", "model.imgsz": 640, "training.base": "yolo11n.yaml",
               "training.imgsz": 640},
    "classify": {"model.weights": "yolo11n-cls.pt", "model.imgsz": 224, "training.base": "yolo11n-cls.yaml",
                 "training.imgsz": 224},
}

# Ultralytics' naming convention: yolo11n.pt, yolov8s-cls.yaml, yolo11m-seg.pt, rtdetr-l.pt... The suffix after
# the family says the task; no suffix (or -p6, -ghost...) is detect.
_ULTRALYTICS_NAME = re.compile(r"^(?P<family>yolov?\d+[a-z]{0,2}|rtdetr)(?P<rest>(?:-[a-z0-9]+)*)"
                               r"(?P<ext>\.(?:pt|ya?ml))$", re.IGNORECASE)
_TASK_SUFFIX = {"cls": "classify", "seg": "segment", "pose": "pose", "obb": "obb"}
_TASK_NOUN = {"detect": "a detection", "classify": "a classification", "segment": "a segmentation",
              "pose": "a pose", "obb": "an oriented-box"}


def model_task(name: str) -> str | None:
    """The task an Ultralytics model name stands for (`yolo11n-cls.pt` -> classify), or None when the name is
    not one of theirs (a model of one's own, `models/v0003/weights/best.pt`): only its contents could say."""
    m = _ULTRALYTICS_NAME.match(PurePath(name).name)
    if m is None:
        return None
    tags = [t for t in m["rest"].lower().split("-") if t in _TASK_SUFFIX]
    return _TASK_SUFFIX[tags[0]] if tags else "detect"


def _check_model_task(key: str, name: str, task: str) -> None:
    found = model_task(name)
    if found is None or found == task:
        return
    m = _ULTRALYTICS_NAME.match(PurePath(name).name)
    rest = "".join(f"-{t}" for t in m["rest"].split("-")[1:] if t.lower() not in _TASK_SUFFIX)
    suggestion = m["family"] + ("-cls" if task == "classify" else "") + rest + m["ext"]
    raise PydanticCustomError("task_mismatch", "{message}", {
        "message": f"{key}: {name} is {_TASK_NOUN[found]} model but task is {task}; use {suggestion} or remove "
                   f"the key"})

