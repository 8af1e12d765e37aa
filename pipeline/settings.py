"""The plain values pipeline works with, built once from the config by `watcher.config` (`dataset_options`,
`training_settings`): pipeline and storage never see the YAML.

They are frozen and declare no defaults: `watcher.config.TrainingConfig` is the one place a `training:` key and
its default are declared, so the two cannot drift apart (a key on one side only is a TypeError on the first run).

Example:
    >>> options = DatasetOptions(val_fraction=0.2, balance="none", ambiguity_iou=0.7, imbalance_warn_ratio=5.0,
    ...                          max_repeat=4, conflicts="exclude", near_duplicate_bits=6)
    >>> build_dataset(engine, home, home / "dataset", options)      # and write_report(..., labels=options)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

_FOLDERS = ("home", "dataset_dir", "models_dir", "review_dir")


@dataclass(frozen=True)
class DatasetOptions:
    """How the managed dataset is built and how its labels are judged (`training.val_fraction` ... `conflicts`).
    The dataset build and the report take the same value, so the report flags what the build flags."""

    val_fraction: float
    balance: str  # none | oversample
    ambiguity_iou: float  # boxes of two classes overlapping more than this are one object with two names
    imbalance_warn_ratio: float
    max_repeat: int  # oversampling repeats an image at most this often
    conflicts: str  # exclude | latest: what training does with an image its drops disagree about
    near_duplicate_bits: int  # images this many pHash bits apart are one cover (one split, a conflict); 0: off


@dataclass(frozen=True)
class ReviewOptions:
    """The review workbook and the corrections read back from it (`model.review_below`, the task, paths)."""

    task: str  # detect: a correction is recorded and its image copied to review/, it is no box label
    review_below: float  # predictions less sure than this need a person
    review_dir: Path  # where detect corrections are copied for box labelling
    max_pixels: int  # watch.max_pixels: thumbnails are made with the same decoding limit as everything else


@dataclass(frozen=True)
class TrainingSettings:
    """The `training:` section and the task, plus the folders a run needs."""

    home: Path
    dataset_dir: Path
    models_dir: Path
    review_dir: Path  # where the label audit copies the images it flags
    task: str
    base: str
    epochs: int
    imgsz: int
    batch: int | str
    patience: int
    min_new_labels: int
    device: str | int | list
    at: str | None
    promote_min_delta: float  # the candidate's overall score must beat the champion's by at least this
    max_class_drop: float  # and no class with gate_min_images validation images may lose more recall than this
    gate_min_images: int
    reclassify_days: int | None
    oom_imgsz_steps: tuple[int, ...]
    audit_folds: int  # 0: no audit after a training run
    audit_epochs: int
    dataset: DatasetOptions
    workers: int = 8  # dataloader processes: not a config key (Ultralytics caps them by the CPU count)

    def as_params(self) -> dict:
        """JSON for the run's `params` (what the training process reads back), the dataset options flat."""
        out: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "dataset":
                out.update(asdict(value))
            else:
                out[f.name] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) \
                    else value
        return out

    @classmethod
    def from_params(cls, params: dict) -> TrainingSettings:
        """The settings a run recorded. A run recorded before a setting existed has it filled in from the config
        by the supervisor when it resumes (`pipeline.training.supervisor._keep_params`), not defaulted here."""
        own = {f.name for f in fields(cls)} - {"dataset"}
        p = {k: v for k, v in params.items() if k in own}
        for k in _FOLDERS:
            p[k] = Path(p[k])
        p["oom_imgsz_steps"] = tuple(p["oom_imgsz_steps"])
        return cls(**p, dataset=DatasetOptions(**{f.name: params[f.name] for f in fields(DatasetOptions)}))


@dataclass(frozen=True)
class ThumbnailOptions:
    """The report's thumbnails (`reports.thumbnails`) and what is never decoded for one (`watch.max_bytes`,
    `max_pixels`, `max_aspect`: the same limits as the inbox's)."""

    newest: int  # thumbnails beside the newest this many rows of Predictions and of Quarantine; 0: none
    max_bytes: int
    max_pixels: int
    max_aspect: float
