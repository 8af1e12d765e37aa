"""Ambiguity and imbalance on constructed label sets whose answers are known by hand."""

import pytest

from pipeline.labels.formats import Box
from pipeline.labels.quality import LabelledImage, assess_labels, iou, near_groups, plan_oversampling, unsettled

NAMES = ["만화", "동화", "상상화", "역사"]
WHOLE = (0.5, 0.5, 1.0, 1.0)


@pytest.mark.parametrize("a, b, expected", [
    ((0.5, 0.5, 0.4, 0.4), (0.5, 0.5, 0.4, 0.4), 1.0),
    ((0.25, 0.5, 0.5, 1.0), (0.5, 0.5, 0.5, 1.0), 1 / 3),  # half of each overlaps: 0.25 / 0.75
    ((0.2, 0.2, 0.2, 0.2), (0.8, 0.8, 0.2, 0.2), 0.0),
    ((0.5, 0.5, 1.0, 1.0), (0.5, 0.5, 0.5, 0.5), 0.25),  # a box inside another: its area share
])
def test_iou(a, b, expected):
    assert iou(Box("x", *a), Box("y", *b)) == pytest.approx(expected)


def img(key, drop, *boxes, current=True):
    return LabelledImage(key, drop, f"{key}.jpg", tuple(Box(c, *xywh) for c, xywh in boxes), current)


def user_case():
    """The notes' case: one children's comic cover fits 만화, 동화 and 상상화.

    - k1, one drop: 만화 and 동화 boxes on the same cover (IoU 0.9), plus a separate 역사 sticker.
    - k2, two drops: first 동화 (replaced), then 만화 (current), both the whole image.
    - k3, three drops: 상상화, then 만화, then 만화 again (current): two different class sets.
    - k4, two drops, both 역사: a re-drop, not a conflict.
    - k5: 만화 and 상상화 boxes that barely touch (IoU ~0.14): not one object.
    """
    return [
        img("k1", 1, ("만화", (0.5, 0.5, 0.8, 0.9)), ("동화", (0.5, 0.5, 0.8, 0.81)), ("역사", (0.9, 0.1, 0.1, 0.1))),
        img("k2", 2, ("동화", WHOLE), current=False),
        img("k2", 3, ("만화", WHOLE)),
        img("k3", 4, ("상상화", WHOLE), current=False),
        img("k3", 5, ("만화", WHOLE), current=False),
        img("k3", 6, ("만화", WHOLE)),
        img("k4", 7, ("역사", WHOLE), current=False),
        img("k4", 8, ("역사", WHOLE)),
        img("k5", 9, ("만화", (0.3, 0.5, 0.4, 0.4)), ("상상화", (0.6, 0.5, 0.4, 0.4))),
    ]


def test_ambiguity_flags_and_cooccurrence_matrix():
    q = assess_labels(user_case(), names=NAMES, iou_threshold=0.7, warn_ratio=5.0)
    assert q.overlaps == [{"image": "k1", "name": "k1.jpg", "classes": ["동화", "만화"], "iou": 0.9}]
    assert q.conflicts == [
        {"image": "k2", "names": ["k2.jpg"], "classes": ["동화", "만화"],
         "classes_by_drop": {"2": ["동화"], "3": ["만화"]}, "settled": False},
        {"image": "k3", "names": ["k3.jpg"], "classes": ["만화", "상상화"],
         "classes_by_drop": {"4": ["상상화"], "5": ["만화"], "6": ["만화"]}, "settled": True},
    ]
    # 만화~동화: the k1 overlap and the k2 re-label; 만화~상상화: k3's first drop against each later one.
    assert q.cooccurrence == {"만화": {"동화": 2, "상상화": 2}, "동화": {"만화": 2}, "상상화": {"만화": 2}}
    assert q.matrix(NAMES) == [[0, 2, 2, 0], [2, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]]


def test_a_lower_threshold_counts_touching_boxes_as_one_object():
    q = assess_labels(user_case(), names=NAMES, iou_threshold=0.1, warn_ratio=5.0)
    assert q.cooccurrence["만화"]["상상화"] == 3 and len(q.overlaps) == 2


def test_imbalance_counts_current_labels_only():
    q = assess_labels(user_case(), names=NAMES, iou_threshold=0.7, warn_ratio=5.0)
    assert q.counts == {"만화": {"images": 4, "boxes": 4}, "동화": {"images": 1, "boxes": 1},
                        "상상화": {"images": 1, "boxes": 1}, "역사": {"images": 2, "boxes": 2}}
    assert (q.largest, q.smallest, q.ratio, q.warning, q.unused) == ("만화", "동화", 4.0, None, [])


@pytest.mark.parametrize("per_class, warn_ratio, ratio, warned", [
    ({"만화": 10, "동화": 2, "상상화": 5}, 5.0, 5.0, False),  # at the limit: no warning
    ({"만화": 10, "동화": 2, "상상화": 5}, 4.9, 5.0, True),
    ({"만화": 30, "동화": 3}, 5.0, 10.0, True),
    ({"만화": 3}, 5.0, 1.0, False),
])
def test_imbalance_ratio_and_warning(per_class, warn_ratio, ratio, warned):
    images = [img(f"{c}{i}", 0, (c, WHOLE)) for c, n in per_class.items() for i in range(n)]
    q = assess_labels(images, names=NAMES, iou_threshold=0.7, warn_ratio=warn_ratio)
    assert q.ratio == ratio and (q.warning is not None) == warned
    assert q.unused == [n for n in NAMES if n not in per_class]
    if warned:
        assert "training.balance: oversample" in q.warning


def test_no_labels_no_figures():
    q = assess_labels([img("bg", 1)], names=NAMES, iou_threshold=0.7, warn_ratio=5.0)
    assert (q.counts, q.ratio, q.warning, q.unused) == ({}, None, None, NAMES)


def test_a_conflict_is_settled_once_a_later_drop_repeats_the_classes_it_was_last_given():
    def conflicts(*drops):
        return unsettled(assess_labels([img("k", d, (c, WHOLE), current=d == len(drops)) for d, c in
                                        enumerate(drops, 1)], names=NAMES, iou_threshold=0.7, warn_ratio=5.0))

    assert conflicts("만화", "동화") == {"k"}  # two opinions: neither wins
    assert conflicts("만화", "동화", "상상화") == {"k"}  # one cover, three genres
    assert conflicts("만화", "동화", "만화") == set()  # a third drop sides with the first
    assert conflicts("만화", "동화", "동화") == set()
    assert conflicts("만화", "동화", "만화", "상상화") == {"k"}  # a new opinion reopens it
    assert conflicts("만화", "만화") == set()  # a re-drop that agrees is no conflict at all


def test_imbalance_ratios_per_class_and_the_advice_follow_the_config():
    images = [img(f"{c}{i}", 0, (c, WHOLE)) for c, n in {"만화": 40, "동화": 8, "상상화": 10}.items() for i in range(n)]
    q = assess_labels(images, names=NAMES, iou_threshold=0.7, warn_ratio=4.5)
    assert q.ratios == {"만화": 1.0, "동화": 5.0, "상상화": 4.0} and q.imbalanced == ["동화"]
    assert "set" not in q.warning and "training.balance: oversample repeats them" in q.warning
    q = assess_labels(images, names=NAMES, iou_threshold=0.7, warn_ratio=3.0, balance="oversample")
    assert q.imbalanced == ["동화", "상상화"] and "at most training.max_repeat" in q.warning


def test_oversampling_aims_at_the_largest_class_with_a_capped_factor():
    images = ([(f"a{i}", ["만화"]) for i in range(10)] + [(f"b{i}", ["동화"]) for i in range(2)]
              + [(f"c{i}", ["상상화"]) for i in range(5)] + [("bg", [])])
    plan = plan_oversampling(images, max_repeat=4)
    assert (plan.target, plan.max_repeat) == (10.0, 4)
    assert plan.factors == {"동화": 4.0, "만화": 1.0, "상상화": 2.0}  # 동화 would need 5: capped at 4
    assert plan.repeats["b0"] == plan.repeats["b1"] == 4 and plan.repeats["c0"] == 2 and plan.repeats["bg"] == 1
    assert plan.before == {"동화": 2, "만화": 10, "상상화": 5}
    assert plan.after == {"동화": 8, "만화": 10, "상상화": 10}
    assert plan.summary() == "동화 2 -> 8, 만화 10 -> 10, 상상화 5 -> 10"


def test_one_dominant_class_and_equal_small_ones_get_repeated():
    """The users' case: the median is a small class, so aiming at it would repeat nothing."""
    images = [(f"a{i}", ["만화"]) for i in range(40)] + [(f"{c}{i}", [c]) for c in ("동화", "상상화") for i in range(8)]
    plan = plan_oversampling(images, max_repeat=4)
    assert plan.after == {"동화": 32, "만화": 40, "상상화": 32}
    entries = sum(plan.repeats.values())
    assert (plan.after["동화"] + plan.after["상상화"]) / entries > 16 / 56  # the minority's share rises
    assert plan_oversampling(images, max_repeat=10).after["동화"] == 40  # 5x reaches the largest
    assert plan_oversampling(images, max_repeat=1).after == plan.before  # 1: counts only


def test_an_image_with_a_rare_and_a_common_class_repeats_for_the_rare_one():
    images = [(f"a{i}", ["만화"]) for i in range(8)] + [("mix", ["만화", "동화"]), ("b", ["동화"]), ("c", ["역사"])]
    plan = plan_oversampling(images, max_repeat=3)  # 만화 9, 동화 2, 역사 1 -> toward 9, at most 3x
    assert plan.repeats == {**{f"a{i}": 1 for i in range(8)}, "mix": 3, "b": 3, "c": 3}
    assert plan.after == {"동화": 6, "만화": 11, "역사": 3}


H = 0x0123_4567_89AB_CDEF


def near(key, drop, cls, h, current=True):
    return LabelledImage(key, drop, f"{key}.jpg", (Box(cls, *WHOLE),), current, h)


def test_near_duplicates_labelled_with_different_classes_are_a_conflict():
    """The same cover photographed twice: one photo 만화, the other 동화. A third photo agrees with the first (no
    conflict between them), a distinct cover 동화 is nobody's near-duplicate, and a flat image has no hash."""
    images = [near("a", 1, "만화", H), near("b", 2, "동화", H ^ 0b111), near("c", 3, "만화", H ^ (0b11 << 40)),
              near("far", 4, "동화", ~H & (1 << 64) - 1), near("flat", 5, "상상화", None),
              near("b", 0, "만화", H ^ 0b111, current=False)]  # an older drop of b: its conflict is with a's class
    q = assess_labels(images, names=NAMES, iou_threshold=0.7, warn_ratio=5.0, near_bits=6)
    rows = [c for c in q.conflicts if "near_duplicate_of" in c]
    assert rows == [
        {"image": "b", "names": ["a.jpg", "b.jpg"], "classes": ["동화", "만화"],
         "classes_by_drop": {"1": ["만화"], "2": ["동화"]}, "settled": False, "name": "b.jpg",
         "near_duplicate_of": "a.jpg", "near_bits": 3, "images": ["a", "b"]},
        {"image": "c", "names": ["b.jpg", "c.jpg"], "classes": ["동화", "만화"],
         "classes_by_drop": {"2": ["동화"], "3": ["만화"]}, "settled": False, "name": "c.jpg",
         "near_duplicate_of": "b.jpg", "near_bits": 5, "images": ["b", "c"]},
    ]
    assert unsettled(q) == {"a", "b", "c"}
    assert q.cooccurrence["만화"]["동화"] >= 2  # the same cover, two genres: what the matrix is for
    off = assess_labels(images, names=NAMES, iou_threshold=0.7, warn_ratio=5.0, near_bits=0)
    assert [c for c in off.conflicts if "near_duplicate_of" in c] == [] and unsettled(off) == {"b"}


def test_near_duplicates_that_agree_are_no_conflict():
    images = [near("a", 1, "만화", H), near("b", 2, "만화", H ^ 0b11)]
    assert assess_labels(images, names=NAMES, iou_threshold=0.7, warn_ratio=5.0, near_bits=6).conflicts == []


def test_near_duplicate_groups_are_anchored_on_their_earliest_drop():
    """The split follows the group's first image, so a later copy joins the split its cover already has."""
    images = [near("x", 5, "만화", H ^ 0b11), near("y", 9, "만화", H ^ (0b11 << 60)), near("z", 2, "만화", H),
              near("alone", 1, "만화", ~H & (1 << 64) - 1), near("flat", 3, "만화", None),
              near("x", 1 - 10, "만화", H ^ 0b11, current=False)]  # x's first drop came before everything
    assert near_groups(images, 6) == {"x": "x", "y": "x", "z": "x", "alone": "alone", "flat": "flat"}
    assert near_groups(images, 0) == {"x": "x", "y": "y", "z": "z", "alone": "alone", "flat": "flat"}
