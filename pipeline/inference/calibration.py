"""Calibrated confidence for classify models: temperature scaling, and the expected calibration error (ECE).

A classify model's softmax says how sure it is, but a small model trained on few covers says "0.95" far more
often than it is right 95% of the time. One number fitted on the validation split, the temperature T, corrects
most of that: the calibrated row is softmax(log p / T). T > 1 softens (the model was over-confident), T < 1
sharpens; the top-1 class never changes. T = 1 is the model as it is.

    >>> t = fit_temperature(probs, truth)              # probs: (N, C) softmax rows; truth: (N,) class ids
    >>> expected_calibration_error(probs, truth), expected_calibration_error(apply_temperature(probs, t), truth)
    (0.21, 0.04)

ECE: the images binned by their top-1 confidence into 15 equal-width bins; per bin, |share right - mean
confidence|, weighted by the bin's share of the images. 0 means "0.8" is right 80% of the time.
"""

from __future__ import annotations

import math

import numpy as np

BINS = 15
T_MIN, T_MAX = 0.25, 20.0  # the search range: a tiny split must not turn every answer into 1.0 or 1/C
MIN_IMAGES = 20  # fewer validation images than this: too few to fit T on, the model is left as it is
_EPS = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) along the last axis; T = 1 returns `probs` itself, unchanged."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, None)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.asarray(probs).dtype, copy=False)


def nll(probs: np.ndarray, truth: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under the temperature-scaled rows."""
    p = apply_temperature(np.asarray(probs, dtype=np.float64), temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(truth)), truth], _EPS, None))))


def fit_temperature(probs: np.ndarray, truth: np.ndarray, *, tol: float = 1e-5) -> float:
    """The T in [T_MIN, T_MAX] that minimises the NLL of `truth` (golden-section search over 1/T, in which the
    NLL is convex); 1.0 when there are fewer than MIN_IMAGES rows."""
    truth = np.asarray(truth, dtype=np.int64)
    if len(truth) < MIN_IMAGES:
        return 1.0
    probs = np.asarray(probs, dtype=np.float64)
    g = (math.sqrt(5) - 1) / 2
    lo, hi = 1 / T_MAX, 1 / T_MIN  # beta = 1/T
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(probs, truth, 1 / a), nll(probs, truth, 1 / b)
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(probs, truth, 1 / a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(probs, truth, 1 / b)
    return round(1 / ((lo + hi) / 2), 4)


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray, *, bins: int = BINS) -> float | None:
    """Top-1 ECE over `bins` equal-width confidence bins; None for no rows."""
    probs, truth = np.asarray(probs, dtype=np.float64), np.asarray(truth, dtype=np.int64)
    if not len(truth):
        return None
    conf = probs.max(axis=1)
    right = (probs.argmax(axis=1) == truth).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)  # (k/B, (k+1)/B] is bin k
    # Per bin |right - confidence| summed rather than averaged: the bin's weight n_b / N cancels the 1 / n_b.
    gap = np.abs(np.bincount(which, right, bins) - np.bincount(which, conf, bins))
    return float(gap.sum() / len(truth))


def calibrate(probs: np.ndarray, truth: np.ndarray) -> dict:
    """Fit T on a validation split's rows: {temperature, ece_before, ece_after, images}."""
    t = fit_temperature(probs, truth)
    return {"temperature": t, "ece_before": expected_calibration_error(probs, truth),
            "ece_after": expected_calibration_error(apply_temperature(np.asarray(probs, dtype=np.float64), t),
                                                    truth), "images": int(len(truth))}
