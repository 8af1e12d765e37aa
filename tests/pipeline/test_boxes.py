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


@pytest.mark.parametrize("seed, n, limit", [(8, 1000, 70), (9, 300, 64), (10, 200, 1)])
def test_nms_with_a_limit_keeps_the_first_torchvision_keeps(seed, n, limit):
    """The limit may fall inside a block of candidates decided together (boxes.NMS_BLOCK)."""
    import torch
    import torchvision

    boxes, scores = random_boxes(np.random.default_rng(seed), n)
    want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()[:limit]
    assert nms(boxes, scores, 0.5, limit=limit).tolist() == want.tolist()


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


@pytest.mark.parametrize("seed, n, nc", [(5, 3000, 3), (6, 800, 80), (7, 5, 2)])
def test_nms_rows_keeps_what_ultralytics_class_offset_nms_keeps(seed, n, nc):
    """Ultralytics runs one torchvision NMS over boxes offset by class * 7680; nms_rows runs one class at a time."""
    import torch
    import torchvision

    rng = np.random.default_rng(seed)
    boxes, _ = random_boxes(rng, n, spread=600.0)
    pred = np.zeros((4 + nc, n), np.float32)
    pred[:2], pred[2:4] = ((boxes[:, :2] + boxes[:, 2:]) / 2).T, (boxes[:, 2:] - boxes[:, :2]).T
    pred[4:] = rng.uniform(0, 0.5, (nc, n)) ** 2  # most anchors under conf, as a real head's
    rows = nms_rows(pred, 0.1, nc)
    scores, cls = pred[4:].max(0), pred[4:].argmax(0)
    keep = np.flatnonzero(scores > 0.1)
    xyxy = np.concatenate([pred[:2, keep].T - pred[2:4, keep].T / 2, pred[:2, keep].T + pred[2:4, keep].T / 2], 1)
    offset = xyxy + cls[keep, None].astype(np.float32) * 7680
    want = torchvision.ops.nms(torch.from_numpy(offset), torch.from_numpy(scores[keep]), 0.7).numpy()[:300]
    assert rows[:, :4].tolist() == xyxy[want].tolist() and rows[:, 5].tolist() == cls[keep][want].tolist()
