"""Errors of the pipeline. Every rejection carries a reason code that lands in the database and the report.

    CoverwatchError (storage.errors)
    └── Rejected                 this file cannot be used; it goes to quarantine with `code`
    └── ModelUnavailable         no model can be loaded yet (offline, no champion): files wait
    └── FetchError               `coverwatch fetch` could not download a URL; nothing was written to the inbox
    └── DatasetError             `coverwatch dataset export` cannot write the copy (no dataset yet, target not empty)
    └── TrainingError            a training cannot start or finish, or a registry change is impossible
    └── AuditError               a label audit cannot be queued or run (no labels, detect, too few images)
"""

from storage.errors import CoverwatchError

# Reason codes, stable strings: the report and `coverwatch requeue` users read them. Every code any module writes
# to `files.reason` is here with its explanation (a test scans the source for codes missing from it).
REASONS = {
    "zero_bytes": "the file is empty",
    "too_large": "the file is larger than watch.max_bytes",
    "truncated_image": "the image data ends early or is corrupt",
    "not_an_image": "the content is not an image, whatever its extension says",
    "decompression_bomb": "the image declares more pixels than watch.max_pixels",
    "extreme_aspect": "one side of the image is more than watch.max_aspect times the other",
    "unsupported_format": "not an image or label type coverwatch accepts",
    "forbidden_type": "model, pickle or executable files are never loaded from a drop folder",
    "symlink": "symbolic links are never followed",
    "not_regular_file": "FIFOs, sockets and device files are never opened",
    "unreadable": "the file cannot be read (permissions)",
    "replaced": "a new file took this one's name before it was processed; the new content is processed on its own",
    "vanished": "the file disappeared from the drop folder before it could be processed",
    "cannot_move": "the file was processed but cannot be moved out of the drop folder (immutable, read-only "
                   "mount, permissions: see detail); it stays where it is and the move is retried with back-off",
    "processing_error": "the model step failed on this file every time it was tried (see detail); "
                        "`coverwatch requeue` sends it through again",
    # labelled drops (pipeline.labels.formats, pipeline.intake.labelled)
    "wrong_field_count": "a YOLO label line does not have 5 fields (class cx cy w h)",
    "non_numeric": "a class id or coordinate is not a number",
    "not_finite": "a coordinate is NaN or infinite",
    "class_out_of_range": "a class id has no name in the folder's classes.txt",
    "coordinate_out_of_range": "a normalised coordinate is outside 0..1",
    "zero_size_box": "a box has zero or negative width or height",
    "box_outside_image": "a box runs past the image edge",
    "size_mismatch": "the VOC <size> differs from the image's real size",
    "bad_encoding": "the label file is not UTF-8 text",
    "bad_xml": "the VOC file is not the XML labelImg writes",
    "bad_classes": "classes.txt is empty or names a class twice",
    "bad_class_name": "a class name (classes.txt line, VOC <name> or class folder) is empty, longer than 100 "
                      "characters, . or .., or holds a / or \\, NUL or a control character: names are never paths",
    "too_many_boxes": "the label file has more boxes than watch.max_boxes (or is too big to hold no more)",
    "missing_label": "the image's label file did not arrive within watch.pair_timeout_seconds",
    "orphan_label": "the label file's image did not arrive within watch.pair_timeout_seconds",
    "missing_classes": "a YOLO label's folder has no classes.txt to map class ids to names",
    "image_rejected": "the label's image was rejected (see the image's own reason)",
    "label_rejected": "the image's label file was rejected (see the label's own reason)",
    # review workbooks dropped into labeled/ (pipeline.review.guard, pipeline.review.read)
    "workbook_macros": "a macro-enabled workbook (.xlsm, .xlsb, or a macro project inside): never opened",
    "not_xlsx": "a spreadsheet that is not a plain .xlsx (.xls, .ods, damaged, encrypted): save it as .xlsx",
    "workbook_too_big": "the workbook is bigger than 20 MiB, has too many parts, or more than 10,000 rows",
    "zip_bomb": "the workbook's parts unpack to far more than they take (over 200 MiB, or over 100x one part)",
    "xml_bomb": "a part of the workbook declares a DOCTYPE or an ENTITY, as XML bombs do: never parsed",
    "not_review_workbook": "an .xlsx without the Review sheet and its 'id' and 'correct class' columns",
}


class Rejected(CoverwatchError):
    """Raised by a check or a step: the file goes to quarantine with this reason code."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(detail or REASONS.get(code, code), code=code)
        self.detail = detail


class ModelUnavailable(CoverwatchError):
    """Raised when no model can be loaded yet; images wait as awaiting_model."""

    code = "awaiting_model"


class DatasetError(CoverwatchError):
    """Raised by `pipeline.labels.dataset` when a dataset cannot be exported. Codes: no_dataset, export_exists."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail, code=code)


class FetchError(CoverwatchError):
    """Raised by `pipeline.intake.fetch`. Codes: bad_url, unreachable, http_error, too_many_redirects, timeout,
    truncated, too_large, not_an_image, write_failed."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail, code=code)


class TrainingError(CoverwatchError):
    """Raised by `pipeline.training.supervisor`, `pipeline.training.job` and `pipeline.training.registry`. Codes: no_dataset,
    nothing_fits (out of memory at the smallest settings), training_failed, unknown_version, no_previous,
    bad_class_name (a class name that is no safe folder name reached the classify view)."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail, code=code)


class AuditError(CoverwatchError):
    """Raised by `coverwatch audit` and `pipeline.training.audit`. Codes: no_labels (nothing labelled yet),
    classify_only (task: detect), too_few_images (fewer than two classes, or than two images per fold)."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail, code=code)
