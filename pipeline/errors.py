"""Errors of the pipeline. Every rejection carries a reason code that lands in the database and the report.

    CoverwatchError (storage.errors)
    └── Rejected                 this file cannot be used; it goes to quarantine with `code`
    └── ModelUnavailable         no model can be loaded yet (offline, no champion): files wait
    └── FetchError               `coverwatch fetch` could not download a URL; nothing was written to the inbox
"""

from storage.errors import CoverwatchError

# Reason codes, stable strings: the report and `coverwatch requeue` users read them.
REASONS = {
    "zero_bytes": "the file is empty",
    "too_large": "the file is larger than watch.max_bytes",
    "truncated_image": "the image data ends early or is corrupt",
    "not_an_image": "the content is not an image, whatever its extension says",
    "decompression_bomb": "the image declares more pixels than watch.max_pixels",
    "unsupported_format": "not an image or label type coverwatch accepts",
    "forbidden_type": "model, pickle or executable files are never loaded from a drop folder",
    "symlink": "symbolic links are never followed",
    "not_regular_file": "FIFOs, sockets and device files are never opened",
    "unreadable": "the file cannot be read (permissions)",
}


class Rejected(CoverwatchError):
    """Raised by a check or a step: the file goes to quarantine with this reason code."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(detail or REASONS.get(code, code), code=code)
        self.detail = detail


class ModelUnavailable(CoverwatchError):
    """Raised when no model can be loaded yet; images wait as awaiting_model."""

    code = "awaiting_model"


class FetchError(CoverwatchError):
    """Raised by `pipeline.fetch`. Codes: bad_url, unreachable, http_error, too_many_redirects, timeout,
    truncated, too_large, not_an_image, write_failed."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail, code=code)
