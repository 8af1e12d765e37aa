"""NumPy NMS gives what torchvision's (which Ultralytics' predict runs) gives, without importing torch."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.inference.boxes import nms, nms_rows


def random_boxes(rng, n, spread=200.0):
    xy = rng.uniform(0, spread, (n, 2)).astype(np.float32)
    wh = rng.uniform(2, 60, (n, 2)).astype(np.float32)
    return np.concatenate([xy, xy + wh], 1), rng.uniform(0, 1, n).astype(np.float32)


@pytest.mark.parametrize("seed, n, iou", [(0, 50, 0.7), (1, 500, 0.7), (2, 2000, 0.5), (3, 300, 0.3)])
def test_nms_keeps_what_torchvision_keeps(seed, n, iou):
    import torch
    import torchvision

    boxes, scores = random_boxes(np.random.default_rng(seed), n)
    want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    assert nms(boxes, scores, iou, limit=n).tolist() == want.tolist()


@pytest.mark.parametrize("boxes, scores, kept", [
    (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), []),  # nothing
    ([[5, 5, 5, 5], [5, 5, 5, 5]], [0.9, 0.8], [0, 1]),  # empty boxes overlap nothing (0/0), as in torchvision
    ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.9], [1]),  # the same box twice: the better one stays
])
def test_nms_edge_cases(boxes, scores, kept):
    assert nms(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), 0.7).tolist() == kept


def test_nms_stops_at_the_limit():
    boxes, scores = random_boxes(np.random.default_rng(4), 400, spread=5000.0)  # nearly all apart
    assert len(nms(boxes, scores, 0.7, limit=300)) == 300


def test_nms_rows_keeps_classes_apart():
    """Two classes on the same box are two answers; one class twice is one."""
    pred = np.zeros((4 + 2, 3), np.float32)
    pred[:4] = np.array([[50, 50, 50], [50, 50, 50], [20, 20, 20], [20, 20, 20]], np.float32)
    pred[4, 0], pred[5, 1], pred[4, 2] = 0.9, 0.8, 0.6
    rows = nms_rows(pred, 0.25, 2)
    assert rows[:, 5].tolist() == [0, 1] and rows[:, 4].tolist() == pytest.approx([0.9, 0.8])
