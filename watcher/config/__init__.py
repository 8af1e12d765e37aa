"""The config: YAML in, frozen validated objects out, every error naming its key path. `schema` declares the keys
and defaults, `folders` checks where the folders are; here: loading, one-line errors, plain values for `pipeline`.

    >>> cfg = load_config("home/coverwatch.yaml")
    >>> cfg.watch.settle_seconds
    1.0
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.settings import DatasetOptions, ReviewOptions, ThumbnailOptions, TrainingSettings
from watcher.config.folders import check_folder_types, check_folders
from watcher.config.schema import CONFIG_ENV, DEFAULT_CONFIG_NAME, FOLDERS, Config, TrainingConfig
from watcher.errors import ConfigError

__all__ = ["DEFAULT_CONFIG_NAME", "FOLDERS", "Config", "TrainingConfig", "dataset_options", "load_config",
           "resolve_config_path", "review_options", "thumbnail_options", "training_settings"]


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
    check_folders(cfg, path)
    if check_dirs:
        check_folder_types(cfg)
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
    if err["type"] == "task_mismatch":
        return err["msg"]  # already names its key
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



def dataset_options(cfg: Config) -> DatasetOptions:
    """How the dataset is built and its labels judged: the one value the dataset build and the report take.
    The `training:` keys, and `watch.near_duplicate_bits` (the inbox's "looks like" uses it too)."""
    own = {"near_duplicate_bits": cfg.watch.near_duplicate_bits}
    return DatasetOptions(**{f.name: own[f.name] if f.name in own else getattr(cfg.training, f.name)
                             for f in fields(DatasetOptions)})


def training_settings(cfg: Config, **extra) -> TrainingSettings:
    """The plain values `pipeline.training.supervisor` works with, from a loaded config (`extra`: e.g. workers)."""
    t = cfg.training
    rest = t.model_dump(exclude={f.name for f in fields(DatasetOptions)})
    return TrainingSettings(home=cfg.home, dataset_dir=cfg.path("dataset"), models_dir=cfg.path("models"),
                            review_dir=cfg.path("review"), task=cfg.task, dataset=dataset_options(cfg), **rest, **extra)


def review_options(cfg: Config) -> ReviewOptions:
    """The review workbook's and the corrections' values: the task, model.review_below, review/, max_pixels."""
    return ReviewOptions(task=cfg.task, review_below=cfg.model.review_below, review_dir=cfg.path("review"),
                         max_pixels=cfg.watch.max_pixels)


def thumbnail_options(cfg: Config) -> ThumbnailOptions:
    """The report's thumbnails: how many (`reports.thumbnails`), and the inbox's limits on what is decoded."""
    w = cfg.watch
    return ThumbnailOptions(newest=cfg.reports.thumbnails, max_bytes=w.max_bytes, max_pixels=w.max_pixels,
                            max_aspect=w.max_aspect)
