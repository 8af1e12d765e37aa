"""Per-class quality of a model on the validation split, from its outputs (numpy only; no Ultralytics here).

    >>> ev = classify_evaluation(probs, truth, names=["comic", "fairy_tale"])   # probs (N, C), truth (N,)
    >>> ev.overall["top1"], ev.per_class[1]["recall"], ev.confusion["matrix"]
    (0.83, 0.5, [[20, 1], [3, 3]])
    >>> ev.calibration
    {'temperature': 1.63, 'ece_before': 0.17, 'ece_after': 0.05, 'images': 27}

Confusion matrices are rows true, columns predicted, as a person reads them ("of the real fairy tales, 3 were
called comics"); Ultralytics' own detect matrix is the other way round and is turned over by `detect_confusion`.
"""

from __future__ import annotations

import numpy as np

from pipeline.inference.calibration import calibrate
from pipeline.training.registry import Evaluation

BACKGROUND = "background"


def classify_evaluation(probs: np.ndarray, truth: np.ndarray, names: list[str]) -> Evaluation:
    """Top-1/top-5, per class images/precision/recall, the confusion matrix and the temperature fitted on
    these rows, from each validation image's softmax row and its true class id."""
    probs, truth = np.asarray(probs, dtype=np.float64).reshape(len(truth), len(names)), np.asarray(truth, int)
    n = len(names)
    pred = probs.argmax(axis=1) if len(truth) else np.zeros(0, int)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (truth, pred), 1)
    images, predicted, right = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    per_class = [{"class_name": names[i], "images": int(images[i]),
                  "precision": float(right[i] / predicted[i]) if predicted[i] else None,
                  "recall": float(right[i] / images[i]) if images[i] else None} for i in range(n)]
    k = min(5, n)
    top5 = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    overall = {"images": int(len(truth)), "top1": float(np.mean(pred == truth)) if len(truth) else 0.0,
               "top5": float(np.mean((top5 == truth[:, None]).any(axis=1))) if len(truth) else 0.0,
               "precision": _mean(r["precision"] for r in per_class),
               "recall": _mean(r["recall"] for r in per_class)}
    return Evaluation(overall, per_class, {"classes": list(names), "matrix": matrix.tolist()},
                      calibrate(probs, truth) if len(truth) else None)


def detect_confusion(matrix, names: list[str]) -> dict:
    """Ultralytics' detect matrix ([predicted, true], (nc + 1)^2, background last) as rows true, columns
    predicted, with the class order."""
    m = np.asarray(matrix).T
    return {"classes": [*names, BACKGROUND], "matrix": np.rint(m).astype(np.int64).tolist()}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
