"""UltralyticsTrainer.evaluate on tiny real models: per-class figures, the confusion matrix, the temperature."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.training.trainer import UltralyticsTrainer
from tests.pipeline.conftest import copy_coco

pytestmark = pytest.mark.ultralytics


def crops_snapshot(crops: Path, names: list[str], root: Path) -> tuple[Path, dict[str, int]]:
    """The crops' val folders laid out as a managed classify snapshot (images/val, labels/val, data.yaml)."""
    counts = {}
    for sub in ("images/val", "labels/val"):
        (root / sub).mkdir(parents=True)
    for cls, name in enumerate(names):  # the crops are laid out as make_crops lays them out: val/<class>/
        images = sorted((crops / "val" / name).glob("*.jpg"))
        counts[name] = len(images)
        for image in images:
            shutil.copy(image, root / "images/val" / image.name)
            (root / "labels/val" / f"{image.stem}.txt").write_text(f"{cls} 0.5 0.5 1 1\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "names": dict(enumerate(names))}))
    return root / "data.yaml", counts


def test_classify_evaluation_is_per_class_with_its_matrix_and_temperature(classify_weights, tmp_path):
    from ultralytics import YOLO

    names = [YOLO(str(classify_weights)).names[i] for i in range(3)]
    data, counts = crops_snapshot(classify_weights.parents[3] / "crops", names, tmp_path / "snap")
    assert sum(counts.values()) > 10
    ev = UltralyticsTrainer().evaluate(classify_weights, task="classify", data=data, device="cpu")
    matrix = np.array(ev.confusion["matrix"])
    assert ev.confusion["classes"] == names
    assert matrix.sum(axis=1).tolist() == [counts[n] for n in names]  # rows: the true classes
    assert [r["images"] for r in ev.per_class] == [counts[n] for n in names]
    assert ev.overall["top1"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert [r["recall"] for r in ev.per_class] == pytest.approx(list(np.diag(matrix) / matrix.sum(axis=1)))
    cal = ev.calibration
    assert cal["images"] == matrix.sum() and 0.25 <= cal["temperature"] <= 20
    assert 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1


def test_detect_evaluation_carries_ultralytics_confusion_matrix(detect_weights, tmp_path):
    data = copy_coco(tmp_path / "coco")  # val is its 24 images
    ev = UltralyticsTrainer().evaluate(detect_weights, task="detect", data=data, device="cpu")
    classes = ev.confusion["classes"]
    assert classes[-1] == "background" and len(classes) == len(ev.confusion["matrix"])
    matrix = np.array(ev.confusion["matrix"])
    assert matrix.sum() > 0
    assert all({"class_name", "images", "precision", "recall", "map50"} <= set(r) for r in ev.per_class)
