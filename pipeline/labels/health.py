"""What out-of-sample predictions say about the labels: likely label errors and overlapping classes (cleanlab).

    >>> h = assess_health(given=labels, probs=out_of_sample, classes=["comic", "fairy_tale", "painting"])
    >>> h.score, [(i.given, i.suggested) for i in h.flagged][:1], h.pairs[0].recommendation[:10]
    (0.9, [('comic', 'fairy_tale')], 'allow both')

Per image: the given label, the suggested one (the argmax), cleanlab's label-quality score (the self-confidence:
the probability of the given class; low = likely wrong) and whether `find_label_issues` flags it. Per class pair
(`find_overlapping_classes`): how many images of one the models put in the other, cleanlab's joint probability,
and a recommendation in words by `share`, the overlapping images over the images of both classes (at most 1; two
names for one class, split at random, come near 0.5: each image is as likely put in the other):

- share >= MERGE_SHARE (0.3): "merge them": the models cannot tell them apart;
- share >= SHARPEN_SHARE (0.1): "define them more sharply": write down what separates them, relabel the flagged;
- below: "allow both": a few covers fit both; label each by its main genre.

A class no image is labelled with is left out (no fold model could learn it).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

MERGE_SHARE = 0.3
SHARPEN_SHARE = 0.1


@dataclass(frozen=True)
class ImageHealth:
    index: int  # position in the input
    given: str
    suggested: str
    quality: float
    flagged: bool


@dataclass(frozen=True)
class PairHealth:
    rank: int
    class_a: str
    class_b: str
    confused: int  # given one of the two, suggested the other
    overlapping: int
    overlap: float  # cleanlab's joint probability
    share: float
    recommendation: str


@dataclass
class Health:
    classes: list[str]  # those with labelled images, in the input's order
    images: list[ImageHealth]
    pairs: list[PairHealth]
    score: float  # cleanlab's overall_label_health_score
    ranking: list[dict]  # rank_classes_by_label_quality, worst first
    confusion: list[list[int]] = field(default_factory=list)  # [given][suggested] over `classes`

    @property
    def accuracy(self) -> float:
        """Out-of-sample top-1: the share of images whose suggested class is the given one."""
        return sum(row[i] for i, row in enumerate(self.confusion)) / max(1, len(self.images))

    @property
    def majority_share(self) -> float:
        """What always answering the largest class would score: models at or below it learned nothing."""
        return max((sum(row) for row in self.confusion), default=0) / max(1, len(self.images))

    @property
    def flagged(self) -> list[ImageHealth]:
        return sorted((i for i in self.images if i.flagged), key=lambda i: i.quality)


def assess_health(*, given: Sequence[int], probs, classes: list[str]) -> Health:
    """cleanlab's findings on `given` class ids (into `classes`) and `probs` (rows of class probabilities)."""
    from cleanlab.dataset import find_overlapping_classes, overall_label_health_score, rank_classes_by_label_quality
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels, pred, names = _present(np.asarray(given, dtype=int), np.asarray(probs, dtype=float), classes)
    quality = get_label_quality_scores(labels, pred)
    with warnings.catch_warnings(record=True) as caught:  # "too few examples in class 1": a note, not a failure
        warnings.simplefilter("always")
        flagged = find_label_issues(labels, pred, n_jobs=1)  # no process pool: the job is one process
    for w in caught:
        log.info("label audit: %s", str(w.message).replace("class: ", "class index ", 1))
    suggested = pred.argmax(1)
    images = [ImageHealth(i, names[labels[i]], names[suggested[i]], float(quality[i]), bool(flagged[i]))
              for i in range(len(labels))]
    confusion = np.zeros((len(names), len(names)), dtype=int)
    np.add.at(confusion, (labels, suggested), 1)
    overlaps = find_overlapping_classes(labels=labels, pred_probs=pred)
    ranking = rank_classes_by_label_quality(labels=labels, pred_probs=pred)
    return Health(names, images, _pairs(overlaps, confusion, names),
                  float(overall_label_health_score(labels, pred, verbose=False)), _ranking(ranking, names),
                  confusion.tolist())


def recommendation(share: float) -> str:
    if share >= MERGE_SHARE:
        return "merge them: the models cannot tell them apart"
    if share >= SHARPEN_SHARE:
        return "define them more sharply: write down what separates them, then relabel the flagged images"
    return "allow both: a few images fit both; label each by its main class"


def _present(labels: np.ndarray, pred: np.ndarray, classes: list[str]):
    """Only the classes some image is labelled with; probabilities renormalised over them."""
    keep = sorted(set(labels.tolist()))
    if len(keep) < 2:
        raise ValueError("the audit needs labelled images of at least two classes")
    index = {old: new for new, old in enumerate(keep)}
    pred = pred[:, keep] + 1e-6  # a class no fold model learned has probability 0 everywhere
    return np.array([index[x] for x in labels]), pred / pred.sum(1, keepdims=True), [classes[k] for k in keep]


def _pairs(overlaps, confusion: np.ndarray, names: list[str]) -> list[PairHealth]:
    counts = confusion.sum(1)
    out = []
    for row in overlaps.itertuples(index=False):
        a, b, n, joint = int(row[0]), int(row[1]), int(row[2]), float(row[3])
        if n <= 0:
            continue
        share = float(n / max(1, counts[a] + counts[b]))
        out.append(PairHealth(len(out) + 1, names[a], names[b], int(confusion[a, b] + confusion[b, a]), n, joint,
                              share, recommendation(share)))
    return out


def _ranking(frame, names: list[str]) -> list[dict]:
    rows = []
    for r in frame.to_dict("records"):
        rows.append({"class": names[int(r["Class Index"])], "label_issues": int(r["Label Issues"]),
                     "inverse_label_issues": int(r["Inverse Label Issues"]), "label_noise": float(r["Label Noise"]),
                     "quality": float(r["Label Quality Score"])})
    return rows


def weak_models(accuracy: float | None, majority_share: float | None) -> bool:
    """Fold models no better than always answering the largest class: their findings say little about labels."""
    return accuracy is not None and majority_share is not None and accuracy <= majority_share
