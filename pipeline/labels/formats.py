"""Label files as labelImg writes them: parsed, validated, and rejected with a reason code when wrong.

    parse_classes(data)                  classes.txt   -> the class names, in id order
    parse_label(data, kind, names=...)   name.txt/.xml -> ParsedLabel (boxes by class NAME, normalised cxcywh)
    class_name(raw)                      any name from outside -> the NFC class name, or Rejected(bad_class_name)

labelImg's YOLO writer emits `"%d %.6f %.6f %.6f %.6f\\n"` per box and a `classes.txt` beside it (on Windows in
the system code page unless told otherwise, which is why a non-UTF-8 classes.txt gets a pointed message). Its
VOC writer emits `<annotation><size><width>..</width><height>..</height>..<object><name>..<bndbox><xmin>..`.
Any bad line rejects the whole file (`Rejected(code)`): half a label file would teach the model wrong things.
Exact duplicate boxes are dropped and counted; an empty file is a deliberate background image. More than
`max_boxes` boxes is `too_many_boxes`, found before the rest of the file is parsed: one label file must not
cost minutes in every later dataset build.

A class name is data that later names a folder (a classify dataset has one folder per class), so every name
from outside goes through `class_name`: no path separators, NUL or control characters, not `.` or `..`, at most
MAX_CLASS_NAME characters.

Example:
    >>> parse_label(b"1 0.5 0.5 0.2 0.2\\n", "yolo", names=["만화", "동화"]).boxes
    [Box(class_name='동화', cx=0.5, cy=0.5, w=0.2, h=0.2)]
"""

from __future__ import annotations

import io
import math
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from pipeline.errors import Rejected

# How far (normalised) a box may run past the edge before it is an error rather than rounding; within it,
# the box is clipped to the image, as Ultralytics would do anyway.
EDGE_TOLERANCE = 0.01
# A class with no box (a classify drop, a class folder) labels the whole picture. Stored, trained and judged in
# YOLO's normalised centre form (cx, cy, w, h); `corners` gives the (x1, y1, x2, y2) that inference boxes and
# review/ labels use.
WHOLE_IMAGE = (0.5, 0.5, 1.0, 1.0)
MAX_CLASS_NAME = 100  # characters; a class name is one folder name, and NAME_MAX is 255 bytes
DEFAULT_MAX_BOXES = 1000
# A label file may hold at most this many bytes per allowed box (labelImg writes ~45 per YOLO line, ~300 per
# VOC object), plus LABEL_SLACK_BYTES for the VOC header: a bigger file is too_many_boxes unread.
BYTES_PER_BOX = 1024
LABEL_SLACK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Box:
    class_name: str
    cx: float
    cy: float
    w: float
    h: float


@dataclass(slots=True)
class ParsedLabel:
    boxes: list[Box] = field(default_factory=list)
    duplicates: int = 0  # exact duplicate boxes dropped
    clipped: int = 0  # boxes past the edge by less than EDGE_TOLERANCE, clipped


def corners(cx: float, cy: float, w: float, h: float) -> tuple[float, float, float, float]:
    """Normalised centre form -> normalised corners (x1, y1, x2, y2)."""
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def centre(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    """Normalised corners -> YOLO's normalised centre form (cx, cy, w, h)."""
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def normalise_name(name: str) -> str:
    """Class names are the identity: NFC (macOS writes NFD Hangul) and no surrounding space."""
    return unicodedata.normalize("NFC", name.strip())


def class_name(raw: str, where: str = "class name") -> str:
    """The normalised class name, or Rejected(bad_class_name): a name is data, never a path."""
    name = normalise_name(raw)
    bad = _name_problem(name)
    if bad:
        raise Rejected("bad_class_name", f"{where} {name[:MAX_CLASS_NAME]!r} {bad}")
    return name


def _name_problem(name: str) -> str | None:
    if len(name) > MAX_CLASS_NAME:
        return f"is {len(name)} characters long, at most {MAX_CLASS_NAME} are allowed"
    if name in (".", ".."):
        return "is not a name"
    if "/" in name or "\\" in name:
        return "contains a path separator (/ or \\)"
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in name):
        return "contains a control character"
    return None


def is_class_name(name: str) -> bool:
    """True for a name `class_name` accepts unchanged (checks what the database already holds)."""
    return isinstance(name, str) and name == normalise_name(name) and bool(name) and _name_problem(name) is None


def parse_classes(data: bytes) -> list[str]:
    """classes.txt: one name per line; the line number (from 0) is the class id in that folder."""
    lines = _text(data, "classes.txt").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [normalise_name(x) for x in lines]
    if not names:
        raise Rejected("bad_classes", "classes.txt names no class")
    if "" in names:
        raise Rejected("bad_classes", f"classes.txt line {names.index('') + 1} is empty: ids after it would shift")
    seen: set[str] = set()
    for i, n in enumerate(names):
        class_name(n, f"classes.txt line {i + 1}:")
        if n in seen:
            raise Rejected("bad_classes", f"classes.txt line {i + 1}: {n!r} is named twice")
        seen.add(n)
    return names


def parse_label(data: bytes, kind: str, *, names: list[str] | None = None,
                image_size: tuple[int, int] | None = None, max_boxes: int = DEFAULT_MAX_BOXES) -> ParsedLabel:
    """Parse a `yolo` (.txt, ids through `names`) or `voc` (.xml, checked against `image_size`) label.

    Parsing stops at the first box past `max_boxes`; a file too big to hold no more is not parsed at all.
    """
    if kind not in ("yolo", "voc"):
        raise ValueError(f"unknown label kind {kind!r}")
    if len(data) > max_boxes * BYTES_PER_BOX + LABEL_SLACK_BYTES:
        raise Rejected("too_many_boxes", f"{len(data)} bytes: more than a label file of at most {max_boxes} boxes "
                                         "(watch.max_boxes) needs")
    if kind == "yolo":
        return _dedupe(_parse_yolo(_text(data, "label file"), names or [], max_boxes))
    return _dedupe(_parse_voc(data, image_size, max_boxes))


def _too_many(where: str, max_boxes: int) -> Rejected:
    return Rejected("too_many_boxes", f"{where}: more than {max_boxes} boxes (watch.max_boxes)")


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a BOM (Notepad) is harmless
    except UnicodeDecodeError as exc:
        hint = ""
        try:
            data.decode("cp949")
            hint = " (it reads as cp949: labelImg on Korean Windows writes that; save it as UTF-8)"
        except UnicodeDecodeError:
            pass
        raise Rejected("bad_encoding", f"{what} is not UTF-8 at byte {exc.start}{hint}") from None


def _number(text: str, where: str, *, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer class id" if integer else "a number"
        raise Rejected("non_numeric", f"{where}: {text!r} is not {kind}") from None
    if not math.isfinite(value):
        raise Rejected("not_finite", f"{where}: {text!r}")
    return value


def _parse_yolo(text: str, names: list[str], max_boxes: int) -> ParsedLabel:
    out = ParsedLabel()
    boxes = 0
    for n, line in enumerate(io.StringIO(text, newline=None), 1):  # lazily: a long file stops at max_boxes
        fields = line.split()
        if not fields:
            continue
        where = f"line {n}"
        boxes += 1
        if boxes > max_boxes:
            raise _too_many(where, max_boxes)
        if len(fields) != 5:
            raise Rejected("wrong_field_count", f"{where}: {len(fields)} fields, expected 5 (class cx cy w h)")
        cid = int(_number(fields[0], where, integer=True))
        cx, cy, w, h = (_number(f, where) for f in fields[1:])
        if not 0 <= cid < len(names):
            raise Rejected("class_out_of_range", f"{where}: class id {cid}, classes.txt has {len(names)} names")
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise Rejected("coordinate_out_of_range", f"{where}: {' '.join(fields[1:])} not all within 0..1")
        _add_box(out, names[cid], *corners(cx, cy, w, h), where, exact=(cx, cy, w, h))
    return out


def _add_box(out: ParsedLabel, name: str, x1: float, y1: float, x2: float, y2: float, where: str,
             exact: tuple[float, float, float, float] | None = None) -> None:
    """Validate a normalised xyxy box, clip it within the tolerance, append it as cxcywh (`exact` if unclipped)."""
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise Rejected("zero_size_box", f"{where}: width {x2 - x1:g}, height {y2 - y1:g}")
    if min(x1, y1) < -EDGE_TOLERANCE or max(x2, y2) > 1 + EDGE_TOLERANCE:
        raise Rejected("box_outside_image", f"{where}: box {x1:.4f},{y1:.4f},{x2:.4f},{y2:.4f} runs past the edge")
    c = [min(1.0, max(0.0, v)) for v in (x1, y1, x2, y2)]
    if c == [x1, y1, x2, y2] and exact is not None:
        out.boxes.append(Box(name, *exact))  # as written: no float noise from the xyxy round trip
        return
    if c != [x1, y1, x2, y2]:
        out.clipped += 1
    out.boxes.append(Box(name, *centre(*c)))


def _dedupe(parsed: ParsedLabel) -> ParsedLabel:
    seen: set[tuple] = set()
    kept = []
    for b in parsed.boxes:
        key = (b.class_name, round(b.cx, 6), round(b.cy, 6), round(b.w, 6), round(b.h, 6))
        if key not in seen:
            seen.add(key)
            kept.append(b)
    parsed.duplicates += len(parsed.boxes) - len(kept)
    parsed.boxes = kept
    return parsed


_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


def _parse_voc(data: bytes, image_size: tuple[int, int] | None, max_boxes: int) -> ParsedLabel:
    _text(data, "VOC file")
    if _DTD.search(data):  # labelImg never writes one; entities are how XML attacks start
        raise Rejected("bad_xml", "a DOCTYPE or ENTITY declaration is not accepted")
    root = _voc_root(data, max_boxes)
    if root.tag != "annotation":
        raise Rejected("bad_xml", f"root element is <{root.tag}>, expected <annotation>")
    width, height = _voc_size(root, image_size)
    out = ParsedLabel()
    for n, obj in enumerate(root.iter("object"), 1):
        where = f"object {n}"
        name = normalise_name(obj.findtext("name") or "")
        box = obj.find("bndbox")
        if not name or box is None:
            raise Rejected("bad_xml", f"{where}: <name> or <bndbox> missing")
        class_name(name, f"{where}: <name>")
        x1, y1, x2, y2 = (_number((box.findtext(k) or "").strip(), f"{where} <{k}>")
                          for k in ("xmin", "ymin", "xmax", "ymax"))
        _add_box(out, name, x1 / width, y1 / height, x2 / width, y2 / height, where)
    return out


def _voc_root(data: bytes, max_boxes: int) -> ET.Element:
    """The parsed tree, built incrementally so that parsing stops at the first <object> past `max_boxes`."""
    root, objects = None, 0
    try:
        for _event, element in ET.iterparse(io.BytesIO(data), events=("end",)):
            root = element  # the last element to end is the root
            if element.tag == "object":
                objects += 1
                if objects > max_boxes:
                    raise _too_many(f"object {objects}", max_boxes)
    except ET.ParseError as exc:
        raise Rejected("bad_xml", f"not well-formed XML: {exc}") from None
    if root is None:
        raise Rejected("bad_xml", "not well-formed XML: no element found")
    return root


def _voc_size(root: ET.Element, image_size: tuple[int, int] | None) -> tuple[int, int]:
    size = root.find("size")
    if size is None:
        raise Rejected("bad_xml", "<size> missing")
    w, h = (_number((size.findtext(k) or "").strip(), f"<size><{k}>", integer=True) for k in ("width", "height"))
    if w <= 0 or h <= 0:
        raise Rejected("bad_xml", f"<size> {w}x{h} is not a real image size")
    # EXIF-rotated photos: labelImg may have shown them unrotated, so the swapped size is accepted too.
    if image_size is not None and (w, h) != tuple(image_size) and (h, w) != tuple(image_size):
        raise Rejected("size_mismatch", f"<size> says {w}x{h}, the image is {image_size[0]}x{image_size[1]}")
    return int(w), int(h)
