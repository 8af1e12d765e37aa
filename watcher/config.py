"""The config: YAML in, frozen validated objects out, every error naming its key path.

Example:
    >>> cfg = load_config("home/coverwatch.yaml")
    >>> cfg.watch.settle_seconds
    1.0
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from watcher.errors import ConfigError

log = logging.getLogger(__name__)

STRIDE = 32
CONFIG_ENV = "COVERWATCH_CONFIG"
DEFAULT_CONFIG_NAME = "coverwatch.yaml"

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0, strict=True)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _round_to_stride(value: int, key: str) -> int:
    if value % STRIDE:
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


class ModelConfig(_Section):
    weights: str = "yolo11n.pt"
    imgsz: PositiveInt = 640
    device: str = "auto"
    backend: Literal["auto", "torch", "onnx"] = "auto"
    batch: PositiveInt = 16
    conf: Annotated[float, Field(ge=0, le=1)] = 0.25
    review_below: Annotated[float, Field(ge=0, le=1)] = 0.4

    @field_validator("imgsz")
    @classmethod
    def _stride(cls, v: int) -> int:
        return _round_to_stride(v, "model.imgsz")


class TrainingConfig(_Section):
    base: str = "yolo11n.yaml"
    epochs: PositiveInt = 100
    imgsz: PositiveInt = 640
    batch: PositiveInt | Literal["auto"] = "auto"
    patience: Annotated[int, Field(ge=0, strict=True)] = 20
    min_new_labels: PositiveInt = 50
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    balance: Literal["none", "oversample"] = "none"
    imbalance_warn_ratio: Annotated[float, Field(ge=1)] = 5.0
    ambiguity_iou: Annotated[float, Field(gt=0, lt=1)] = 0.7
    device: str | int | list[int] = "auto"
    at: str | None = None
    promote_min_delta: NonNegFloat = 0.0
    reclassify_days: PositiveInt | None = None
    oom_imgsz_steps: tuple[PositiveInt, ...] = (512, 416, 320)

    @field_validator("imgsz")
    @classmethod
    def _stride(cls, v: int) -> int:
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


def resolve_config_path(given: str | os.PathLike | None) -> Path:
    """`-c PATH`, else $COVERWATCH_CONFIG, else ./coverwatch.yaml."""
    if given:
        return Path(given)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else Path(DEFAULT_CONFIG_NAME)


def load_config(path: str | os.PathLike, *, check_dirs: bool = True) -> Config:
    """Read, validate and freeze the config; raise ConfigError with a one-line message naming the key."""
    path = Path(path)
    raw = _read_yaml(path)
    home = path.resolve().parent
    try:
        cfg = Config.model_validate({**raw, "home": home, "config_path": path.resolve()})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None
    if check_dirs:
        _check_dirs(cfg)
    return cfg


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (create one with `coverwatch init`)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    for key in ("home", "config_path"):
        if key in raw:
            raise ConfigError(f"{path}: {key}: unknown key")
    return raw


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("literal[", "function-after", "constrained-int"))]
    # pydantic names union members in the location ("int", "literal['auto']"); the user wants the key.
    loc = [p for p in loc if p not in {"int", "str", "float", "bool", "list[int]", "none"}]
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    msg = _MESSAGES.get(kind) or err["msg"]
    if key == "training.batch":
        msg = "expected a positive integer or 'auto'"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = err.get("input")
    if kind not in _MESSAGES and not isinstance(got, (dict, list)):
        msg = f"{msg} (got {got!r})"
    return f"{key}: {msg[0].lower() + msg[1:]}"


def _check_dirs(cfg: Config) -> None:
    for name in FOLDERS:
        p = cfg.path(name)
        if p.exists() and not p.is_dir():
            raise ConfigError(f"paths.{name}: {p} exists and is not a directory")


def training_settings(cfg: Config):
    """The plain values `pipeline.training` works with, from a loaded config."""
    from pipeline.training import TrainingSettings

    return TrainingSettings.from_values(home=cfg.home, dataset_dir=cfg.path("dataset"), models_dir=cfg.path("models"),
                                        task=cfg.task, training=cfg.training.model_dump())
