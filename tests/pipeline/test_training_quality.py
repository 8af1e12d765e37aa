"""Per-class figures and confusion matrices from a model's outputs on the validation split (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.training.quality import classify_evaluation, detect_confusion

NAMES = ["comic", "fairy_tale", "painting"]


def rows(*answers: int, sure: float = 0.8) -> np.ndarray:
    p = np.full((len(answers), 3), (1 - sure) / 2)
    p[np.arange(len(answers)), answers] = sure
    return p


def test_classify_figures_per_class_and_the_confusion_matrix():
    truth = np.array([0, 0, 0, 0, 1, 1, 2])
    ev = classify_evaluation(rows(0, 0, 0, 1, 1, 0, 2), truth, NAMES)
    assert ev.confusion == {"classes": NAMES, "matrix": [[3, 1, 0], [1, 1, 0], [0, 0, 1]]}
    assert ev.per_class == [
        {"class_name": "comic", "images": 4, "precision": 0.75, "recall": 0.75},
        {"class_name": "fairy_tale", "images": 2, "precision": 0.5, "recall": 0.5},
        {"class_name": "painting", "images": 1, "precision": 1.0, "recall": 1.0}]
    assert ev.overall["top1"] == pytest.approx(5 / 7) and ev.overall["top5"] == 1.0
    assert ev.overall["images"] == 7
    assert ev.calibration["temperature"] == 1.0  # 7 images: too few to fit on
    assert ev.calibration["ece_before"] == ev.calibration["ece_after"] == pytest.approx(abs(0.8 - 5 / 7))


def test_a_class_never_predicted_has_no_precision_and_one_without_images_no_recall():
    ev = classify_evaluation(rows(0, 0), np.array([0, 1]), NAMES)
    fairy, painting = ev.per_class[1], ev.per_class[2]
    assert (fairy["precision"], fairy["recall"]) == (None, 0.0)
    assert (painting["images"], painting["precision"], painting["recall"]) == (0, None, None)


def test_an_empty_split_gives_empty_figures():
    ev = classify_evaluation(np.zeros((0, 3)), np.zeros(0, int), NAMES)
    assert ev.overall["images"] == 0 and ev.calibration is None
    assert ev.confusion["matrix"] == [[0] * 3] * 3


def test_ultralytics_detect_matrix_is_turned_to_rows_true():
    # Ultralytics: [predicted, true]; 2 cars found as cars, 1 person found as car, 1 person missed (background)
    ultra = np.array([[4.0, 0.0, 0.0], [1.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    assert detect_confusion(ultra, ["person", "car"]) == {
        "classes": ["person", "car", "background"], "matrix": [[4, 1, 1], [0, 2, 0], [0, 0, 0]]}
