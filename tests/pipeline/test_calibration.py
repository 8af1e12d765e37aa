"""Temperature scaling and the expected calibration error, on scripted model outputs (no model, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.inference.calibration import (
    MIN_IMAGES,
    T_MAX,
    T_MIN,
    apply_temperature,
    calibrate,
    expected_calibration_error,
    fit_temperature,
)


def overconfident(n: int = 300, classes: int = 3, right: float = 0.6, top: float = 0.95, seed: int = 0):
    """A model that always says `top` for its answer and is right only `right` of the time."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    wrong = rng.random(n) >= right
    pred = np.where(wrong, (truth + rng.integers(1, classes, n)) % classes, truth)
    probs = np.full((n, classes), (1 - top) / (classes - 1))
    probs[np.arange(n), pred] = top
    return probs.astype(np.float32), truth


def test_calibration_lowers_the_ece_of_an_overconfident_model():
    probs, truth = overconfident()
    out = calibrate(probs, truth)
    assert out["temperature"] > 1.5  # softened
    assert out["ece_before"] == pytest.approx(0.95 - np.mean(probs.argmax(1) == truth), abs=1e-6)
    assert out["ece_before"] > 0.3 and out["ece_after"] < 0.03
    calibrated = apply_temperature(probs, out["temperature"])
    assert (calibrated.argmax(1) == probs.argmax(1)).all()  # the answer never changes, only its confidence
    assert calibrated.max(1) == pytest.approx(np.full(len(truth), np.mean(probs.argmax(1) == truth)), abs=0.03)


def test_an_underconfident_model_is_sharpened():
    probs, truth = overconfident(right=0.95, top=0.5)
    assert fit_temperature(probs, truth) < 1


def test_temperature_one_changes_nothing():
    probs, _ = overconfident(n=10)
    assert apply_temperature(probs, 1.0) is probs
    row = np.array([0.7, 0.2, 0.1], dtype=np.float32)
    assert apply_temperature(row, 1.0) is row
    assert apply_temperature(row, 2.0).dtype == np.float32
    assert apply_temperature(row, 2.0).sum() == pytest.approx(1.0)


def test_a_split_too_small_to_fit_on_keeps_the_model_as_it_is():
    probs, truth = overconfident(n=MIN_IMAGES - 1)
    assert fit_temperature(probs, truth) == 1.0


@pytest.mark.parametrize("right, expected", [(1.0, T_MIN), (0.0, T_MAX)])
def test_the_search_stays_in_its_bounds(right, expected):
    probs, truth = overconfident(right=right, top=0.6)
    assert fit_temperature(probs, truth) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("probs, truth, ece", [
    ([[0.9, 0.1], [0.9, 0.1]], [0, 0], 0.1),  # says 0.9, right every time
    ([[0.9, 0.1], [0.2, 0.8]], [0, 0], 0.45),  # bins 0.9 (right: gap 0.1) and 0.8 (wrong: 0.8), half each
    ([[0.5, 0.5]], [1], 0.5),  # a tie is class 0, wrong
])
def test_ece_by_hand(probs, truth, ece):
    assert expected_calibration_error(np.array(probs), np.array(truth)) == pytest.approx(ece)


def test_ece_of_no_rows_is_none():
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0)) is None


@pytest.mark.parametrize("manifest, expected", [
    ('{"calibration": {"temperature": 1.8, "ece_before": 0.2, "ece_after": 0.05}}', 1.8),
    ('{"calibration": null}', 1.0),  # detect, or a split too small: nothing fitted
    ('{"state": "champion"}', 1.0),  # a version from before calibration
    ('{"calibration": {"temperature": -3}}', 1.0),
    ('{"calibration": {"temperature": "warm"}}', 1.0),
    ('[1, 2]', 1.0),
    ("{not json", 1.0),
])
def test_the_loader_reads_the_temperature_beside_the_weights(tmp_path, manifest, expected):
    from pipeline.inference.model_loader import manifest_temperature

    (tmp_path / "v0003" / "weights").mkdir(parents=True)
    (tmp_path / "v0003" / "manifest.json").write_text(manifest)
    assert manifest_temperature(tmp_path / "v0003" / "weights" / "best.pt") == expected


def test_weights_outside_the_registry_are_not_calibrated(tmp_path):
    from pipeline.inference.model_loader import manifest_temperature

    (tmp_path / "manifest.json").write_text('{"calibration": {"temperature": 2.0}}')
    assert manifest_temperature(tmp_path / "mine" / "best.pt") == 1.0
