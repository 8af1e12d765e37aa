"""The review workbook's layout: what the writer (`export`) puts where and the reader (`read`) looks for.

    Review (sheet 1)   row 1: how to fill it in; row 2: what a correction does in this home; row 3: the header;
                       one row per image below: thumbnail, name, prediction, alternatives, *correct class*, why, id
    lists (hidden)     column A: the class names, then SKIP: the correct-class drop-down's source, on a sheet of
                       its own so it holds any number of names and any characters (만화)

The reader finds the header by its cells, not by position, so a sheet a person re-sorted or edited in LibreOffice
still reads. A row is tied to its archived image by `row_id`: the inbox file's id and its content's SHA-256
prefix, so a row never names another picture, even in a database that was rebuilt.
"""

from __future__ import annotations

import re

from pipeline.images.thumbs import THUMB_PX  # noqa: F401 - the cached thumbnails' size, shown whole here

SHEET = "Review"
LISTS = "lists"
HEADER_ROW = 2  # 0-based: the table's header is the third row
SKIP = "(not a cover / skip)"
ID, CORRECT = "id", "correct class"
COLUMNS = ("thumbnail", "original_name", "predicted_class", "confidence", "alternative 1", "alternative 2",
           "alternative 3", CORRECT, "why", ID)
SOURCE_FORMAT = "sheet"  # the Sample and Label source_format of a correction
_ROW_ID = re.compile(r"(\d{1,18})-([0-9a-f]{12})")

# What became of one filled row (`corrections.outcome`), for the report and the README.
OUTCOMES = {
    "labelled": "the image got the chosen class as its label (classify): it counts toward training.min_new_labels",
    "unchanged": "the image already had exactly this label: nothing new",
    "skipped": f"the row said {SKIP}: no label, and the image is not listed for review again",
    "review_copy": "a detect home: the class is recorded and the image copied to review/ for box labelling",
    "unknown_class": "the chosen class is not in the class list: nothing was guessed (add the class through a "
                     "labelled drop first, or pick one from the drop-down)",
    "unknown_row_id": "the row's id names no image coverwatch classified (edited, or from another home)",
    "image_gone": "the image is no longer in archive/",
    "conflicting_rows": "the same image appears in several rows with different choices: none was taken",
}
TAKEN = ("labelled", "unchanged", "skipped", "review_copy")  # outcomes after which an image needs no person


def row_id(file_id: int, sha256: str) -> str:
    """>>> row_id(12, "ab12cd34ef56" + "0" * 52)
    '12-ab12cd34ef56'"""
    return f"{file_id}-{sha256[:12]}"


def parse_row_id(text: str) -> tuple[int, str] | None:
    """(file id, sha256 prefix), or None when `text` is not an id this module wrote."""
    m = _ROW_ID.fullmatch(text.strip())
    return (int(m.group(1)), m.group(2)) if m else None


def instructions(task: str) -> tuple[str, str]:
    """The two lines above the header: how to fill the sheet, and what a correction does in a `task` home."""
    how = (f"For each image you know, choose its class in the '{CORRECT}' column (or {SKIP}); leave the others "
           "empty. Save as .xlsx and drop the file into labeled/.")
    if task == "detect":
        return how, ("This home detects boxes: a class chosen here is not a box label. It is recorded and the "
                     "image is copied to review/ to draw its boxes in labelImg.")
    return how, "Each class chosen becomes the image's label for the next training."
