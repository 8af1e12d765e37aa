"""Label parsing and validation: every bad case has its reason code; good labels come out by class name."""

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.errors import Rejected
from pipeline.labels.formats import WHOLE_IMAGE, Box, centre, corners, parse_classes, parse_label
from pipeline.intake.pairing import ClassFolder, Member, Pair, Reject, Wait, plan_pairs
from tests.labelimg import voc_xml, yolo_text

NAMES = ["만화", "동화", "상상화"]


def outcome(fn):
    try:
        return fn()
    except Rejected as exc:
        return exc.code


@pytest.mark.parametrize("text, expected", [
    (yolo_text([(1, 0.5, 0.5, 0.2, 0.4)]), [Box("동화", 0.5, 0.5, 0.2, 0.4)]),
    (yolo_text([(0, 0.25, 0.25, 0.5, 0.5), (2, 0.75, 0.75, 0.5, 0.5)]),
     [Box("만화", 0.25, 0.25, 0.5, 0.5), Box("상상화", 0.75, 0.75, 0.5, 0.5)]),
    (b"0 0.5 0.5 0.2 0.4\r\n", [Box("만화", 0.5, 0.5, 0.2, 0.4)]),  # Windows line ends
    (b"", []),  # an empty label file: a deliberate background image
    (b"\n  \n", []),
    (b"0 0.5 0.5 0.2\n", "wrong_field_count"),
    (b"0 0.5 0.5 0.2 0.2 0.9\n", "wrong_field_count"),
    (b"0,0.5,0.5,0.2,0.2\n", "wrong_field_count"),
    (b"cat 0.5 0.5 0.2 0.2\n", "non_numeric"),
    (b"1.0 0.5 0.5 0.2 0.2\n", "non_numeric"),  # class ids are integers
    (b"0 0.5 half 0.2 0.2\n", "non_numeric"),
    (b"0 nan 0.5 0.2 0.2\n", "not_finite"),
    (b"0 0.5 0.5 inf 0.2\n", "not_finite"),
    (b"0 0.5 0.5 0.2 -inf\n", "not_finite"),
    (b"3 0.5 0.5 0.2 0.2\n", "class_out_of_range"),
    (b"-1 0.5 0.5 0.2 0.2\n", "class_out_of_range"),
    (b"0 1.2 0.5 0.2 0.2\n", "coordinate_out_of_range"),
    (b"0 0.5 -0.1 0.2 0.2\n", "coordinate_out_of_range"),
    (b"0 0.5 0.5 0.0 0.2\n", "zero_size_box"),
    (b"0 0.5 0.5 0.2 0.000000\n", "zero_size_box"),
    (b"0 0.950000 0.5 0.200000 0.2\n", "box_outside_image"),  # runs 5% past the right edge
    (b"0 0.5 0.05 0.2 0.2\n", "box_outside_image"),
    (b"0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n",
     [Box("만화", 0.5, 0.5, 0.2, 0.2), Box("동화", 0.5, 0.5, 0.2, 0.2)]),  # exact duplicate dropped
    ("0 0.5 0.5 0.2 0.2\n".encode("utf-16"), "bad_encoding"),
    (b"0 0.5 0.5 0.2 0.2 \xff\n", "bad_encoding"),
])
def test_yolo_labels(text, expected):
    data = text.encode() if isinstance(text, str) else text
    result = outcome(lambda: parse_label(data, "yolo", names=NAMES).boxes)
    assert result == expected


def test_yolo_box_a_rounding_error_past_the_edge_is_clipped_not_rejected():
    parsed = parse_label(b"0 0.902000 0.500000 0.200000 0.200000\n", "yolo", names=NAMES)  # right edge 1.002
    [box] = parsed.boxes
    assert parsed.clipped == 1 and box.cx + box.w / 2 == pytest.approx(1.0) and box.w == pytest.approx(0.198)


def test_duplicate_lines_are_counted():
    parsed = parse_label(b"0 0.5 0.5 0.2 0.2\n" * 3, "yolo", names=NAMES)
    assert (len(parsed.boxes), parsed.duplicates) == (1, 2)


@pytest.mark.parametrize("data, expected", [
    ("만화\n동화\n상상화\n".encode(), NAMES),
    ("만화\r\n동화\r\n".encode(), ["만화", "동화"]),
    ("\ufeff만화\n동화\n".encode(), ["만화", "동화"]),  # a BOM from Notepad
    ("  만화 \n동화\n\n\n".encode(), ["만화", "동화"]),  # trailing blank lines, spaces
    ("\u1106\u1161\u11ab\u1112\u116a\n".encode(), ["만화"]),  # macOS NFD Hangul is the same name
    ("traffic light\nstop sign\n".encode(), ["traffic light", "stop sign"]),
    (b"", "bad_classes"),
    (b"\n\n", "bad_classes"),
    ("만화\n\n동화\n".encode(), "bad_classes"),  # an empty line in the middle would shift every id after it
    ("만화\n동화\n만화\n".encode(), "bad_classes"),
    ("만화\n동화\n".encode("cp949"), "bad_encoding"),  # labelImg on Korean Windows writes classes.txt so
])
def test_classes_txt(data, expected):
    assert outcome(lambda: parse_classes(data)) == expected


def test_bad_encoding_names_the_likely_cause():
    with pytest.raises(Rejected, match="cp949"):
        parse_classes("만화\n".encode("cp949"))


COVER = voc_xml("a.jpg", 400, 200, [("만화", 100, 50, 300, 150)])


@pytest.mark.parametrize("data, expected", [
    (COVER, [Box("만화", 0.5, 0.5, 0.5, 0.5)]),
    (voc_xml("a.jpg", 400, 200, []), []),  # no object: background
    (voc_xml("a.jpg", 400, 200, [("동화", 0, 0, 400, 200), ("동화", 0, 0, 400, 200)]),
     [Box("동화", 0.5, 0.5, 1.0, 1.0)]),  # exact duplicate object dropped
    (voc_xml("a.jpg", 400, 200, [("new class", 1, 1, 401, 200)]), [Box("new class", 0.50125, 0.5025, 0.9975, 0.995)]),  # 1px over: clipped
    (voc_xml("a.jpg", 640, 480, [("만화", 1, 1, 10, 10)]), "size_mismatch"),
    (voc_xml("a.jpg", 400, 200, [("만화", 100, 50, 500, 150)]), "box_outside_image"),
    (voc_xml("a.jpg", 400, 200, [("만화", -30, 50, 100, 150)]), "box_outside_image"),
    (voc_xml("a.jpg", 400, 200, [("만화", 300, 50, 100, 150)]), "zero_size_box"),
    (voc_xml("a.jpg", 400, 200, [("만화", 100, 50, 100, 150)]), "zero_size_box"),
    (voc_xml("a.jpg", 400, 200, [("만화", "left", 50, 100, 150)]), "non_numeric"),
    (voc_xml("a.jpg", 400, 200, [("만화", "nan", 50, 100, 150)]), "not_finite"),
    (voc_xml("a.jpg", 400, 200, [("", 1, 1, 10, 10)]), "bad_xml"),
    (COVER.replace(b"<size>", b"<sighs>").replace(b"</size>", b"</sighs>"), "bad_xml"),
    (COVER[:-30], "bad_xml"),
    (b'<!DOCTYPE a [<!ENTITY x "y">]>' + COVER, "bad_xml"),
    (b"<annotations/>", "bad_xml"),
    (COVER.decode().encode("cp949"), "bad_encoding"),
])
def test_voc_labels(data, expected):
    assert outcome(lambda: parse_label(data, "voc", image_size=(400, 200)).boxes) == expected


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def member(i, path, age=0.0):
    return Member(i, path, T0 - timedelta(seconds=age))


def jobs(members, *, names=None, timeout=30.0, class_folder=None, registered=(), grace_cutoff=None, in_flight=()):
    return plan_pairs(members, names_by_folder=names or {}, cutoff=T0 - timedelta(seconds=timeout),
                      class_folder=lambda f: (class_folder or {}).get(f), registered=set(registered),
                      grace_cutoff=grace_cutoff, in_flight=in_flight)


IMG, TXT, XML = member(1, "d/a.jpg"), member(2, "d/a.txt"), member(3, "d/a.xml")


@pytest.mark.parametrize("members, kw, expected", [
    ([IMG, TXT], {"names": {"d": NAMES}}, [Pair(IMG, TXT)]),
    ([TXT, IMG], {"names": {"d": NAMES}}, [Pair(IMG, TXT)]),  # arrival order does not matter
    ([IMG, XML], {}, [Pair(IMG, XML)]),  # VOC needs no classes.txt
    ([IMG, TXT], {}, [Wait(IMG, "waiting for d/classes.txt"), Wait(TXT, "waiting for d/classes.txt")]),
    ([member(1, "d/a.jpg", 60), TXT], {}, [Reject(member(1, "d/a.jpg", 60), "missing_classes", "no d/classes.txt arrived"),
                                          Reject(TXT, "missing_classes", "no d/classes.txt arrived")]),
    ([IMG], {}, [Wait(IMG, "waiting for its label")]),
    ([member(1, "d/a.jpg", 60)], {}, [Reject(member(1, "d/a.jpg", 60), "missing_label",
                                             "no .txt or .xml label with the same name arrived")]),
    ([member(2, "d/a.txt", 60)], {}, [Reject(member(2, "d/a.txt", 60), "orphan_label", "no image with the same name arrived")]),
    ([IMG], {"class_folder": {"d": "만화"}}, [Wait(IMG, "waiting for its label")]),  # an unknown class waits
    ([IMG], {"class_folder": {"d": "만화"}, "registered": ["만화"]}, [ClassFolder(IMG, "만화")]),
    ([member(1, "d/a.jpg", 60)], {"class_folder": {"d": "만화"}}, [ClassFolder(member(1, "d/a.jpg", 60), "만화")]),
    ([member(1, "x/a.jpg"), member(2, "y/a.txt")], {"names": {"x": NAMES, "y": NAMES}},
     [Wait(member(1, "x/a.jpg"), "waiting for its label"), Wait(member(2, "y/a.txt"), "waiting for its image")]),
])
def test_pairing(members, kw, expected):
    assert jobs(members, **kw) == expected


QUIET = T0 - timedelta(seconds=1)  # a classify home: folders quiet for a second


@pytest.mark.parametrize("members, kw, expected", [
    ([member(1, "d/a.jpg", 2)], {"class_folder": {"d": "만화"}}, [ClassFolder(member(1, "d/a.jpg", 2), "만화")]),
    # something else arrived in the folder since: a label may still come
    ([member(1, "d/a.jpg", 2), member(2, "d/b.jpg")], {"class_folder": {"d": "만화"}},
     [Wait(member(1, "d/a.jpg", 2), "waiting for its label"), Wait(member(2, "d/b.jpg"), "waiting for its label")]),
    # a file on disk that is not registered yet (still being copied): not quiet
    ([member(1, "d/a.jpg", 2)], {"class_folder": {"d": "만화"}, "in_flight": {"d"}},
     [Wait(member(1, "d/a.jpg", 2), "waiting for its label")]),
    # a folder that held a label file is a labelImg drop, never a class folder
    ([member(1, "d/a.jpg", 2)], {}, [Wait(member(1, "d/a.jpg", 2), "waiting for its label")]),
    ([member(1, "d/a.jpg", 2), member(2, "d/a.xml", 2)], {"class_folder": {"d": "만화"}},
     [Pair(member(1, "d/a.jpg", 2), member(2, "d/a.xml", 2))]),
])
def test_pairing_in_a_classify_home(members, kw, expected):
    assert jobs(members, grace_cutoff=QUIET, **kw) == expected


def test_the_whole_image_is_one_box_in_both_forms():
    """A class with no box: YOLO's centre form in the dataset, corners for inference and review/ labels."""
    from pipeline.inference.review import label_line

    assert WHOLE_IMAGE == (0.5, 0.5, 1.0, 1.0) and corners(*WHOLE_IMAGE) == (0.0, 0.0, 1.0, 1.0)
    assert label_line(2, *corners(*WHOLE_IMAGE)) == "2 0.500000 0.500000 1.000000 1.000000\n"
    assert centre(*corners(0.3, 0.55, 0.4, 0.7)) == pytest.approx((0.3, 0.55, 0.4, 0.7))
