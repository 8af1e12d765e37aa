"""`coverwatch fetch`: download an image from an http(s) URL into the inbox, checked before the watcher sees it.

The body goes to a hidden `.NAME.XXXXXXXX.part` file, which the watcher ignores, and is renamed to its final name
only once it is complete, within `max_bytes`, fsynced, and identified by Pillow as an image format that coverwatch
accepts. Any failure removes the temp file, so the inbox only ever holds whole images; a fetch killed with -9
cannot, so each fetch first removes such temp files left by earlier ones (ours by name, untouched for 30 minutes:
a live download writes at least once per `timeout`).

The name comes from the URL the user gave (as curl -O and wget do, so a server cannot choose it): the last path
segment, percent-decoded and stripped of separators, control characters and leading dots, with the extension of
the detected format. It never replaces a file already in the inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import ssl
import stat
import time
import unicodedata
import warnings
from pathlib import Path
from typing import BinaryIO
from urllib.parse import SplitResult, unquote, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from pipeline.images.decode import IMAGE_EXTENSIONS, pillow_open
from pipeline.errors import FetchError
from storage.files import fsync_dir

log = logging.getLogger(__name__)

# Pillow format -> the extension the file is saved with; the same formats pipeline.images.decode accepts.
_EXTENSION_FOR = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif",
                  "GIF": ".gif"}
_SAME_EXTENSION = {".jpeg": ".jpg", ".tiff": ".tif"}
_OPEN_AS = [f for f in _EXTENSION_FOR if f != "MPO"]  # Pillow opens MPO through its JPEG plugin
# Room for the temp name's dot, token and suffix, and for "-N" and an extension, under NAME_MAX (255 bytes).
_MAX_NAME_BYTES = 200
_USER_AGENT = "coverwatch-fetch"
STALE_PART_SECONDS = 30 * 60
_OUR_PART = re.compile(r"\..+\.[0-9a-f]{8}\.part", re.DOTALL)  # what _create_temp makes


def fetch_to_inbox(url: str, inbox: Path, *, max_bytes: int, timeout: float = 30.0, max_redirects: int = 5,
                   deadline: float | None = None, transport: httpx.AsyncBaseTransport | None = None) -> Path:
    """Download `url` into `inbox` and return the saved path; raise FetchError (nothing left behind) on failure.

    `timeout` bounds the connect and each wait for data; `deadline` (default 10 x timeout) bounds the whole
    download, redirects included. `transport` replaces the network (tests pass an `httpx.MockTransport`).
    """
    inbox = Path(inbox)
    remove_stale_parts(inbox)
    base = _safe_name(_check_url(url).path.rpartition("/")[2])
    try:
        tmp, fd = _create_temp(inbox, base)
    except OSError as exc:
        raise FetchError("write_failed", f"cannot write to {inbox}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            digest = asyncio.run(_download(url, out, max_bytes=max_bytes, timeout=timeout,
                                           max_redirects=max_redirects, transport=transport,
                                           deadline=10 * timeout if deadline is None else deadline))
            out.flush()
            os.fsync(out.fileno())
        final = _unique_path(inbox, _final_name(base, _identify(tmp), digest))
        os.rename(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FetchError("write_failed", f"cannot write to {inbox}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # best effort: some file systems cannot fsync a directory
        fsync_dir(inbox)
    log.debug("fetched %s -> %s", url, final)
    return final


def _check_url(url: str) -> SplitResult:
    # urlsplit silently drops tabs and newlines; a URL holding them is a mistake, not something to repair.
    if any(not c.isprintable() for c in url):
        raise FetchError("bad_url", "the URL contains control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise FetchError("bad_url", str(exc)) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError("bad_url", f"only http and https URLs are fetched, not {parts.scheme or 'a bare path'!r}")
    if not parts.hostname:
        raise FetchError("bad_url", "the URL has no host")
    return parts


def _safe_name(segment: str) -> str:
    """A file name from one URL path segment: no separators, controls, leading dots; "" when nothing is left."""
    name = re.split(r"[/\\]", unquote(segment))[-1]
    name = unicodedata.normalize("NFC", "".join(c for c in name if c.isprintable()))
    name = name.strip().lstrip(".").strip()
    stem, suffix = os.path.splitext(name)
    if len(suffix) > 10:
        stem, suffix = name, ""
    return stem.encode()[:_MAX_NAME_BYTES].decode(errors="ignore") + suffix


def _final_name(base: str, fmt: str, digest: str) -> str:
    ext = _EXTENSION_FOR[fmt]
    stem, suffix = os.path.splitext(base)
    if _SAME_EXTENSION.get(suffix.lower(), suffix.lower()) == ext:
        return base
    # Replace an image extension that names the wrong format; keep any other one visible (evil.py -> evil.py.jpg).
    base = stem if suffix.lower() in IMAGE_EXTENSIONS else base
    return f"{base or 'download-' + digest[:8]}{ext}"


def _unique_path(inbox: Path, name: str) -> Path:
    # Check-then-rename leaves a tiny race with another writer; os.link would close it, but the watcher takes a
    # link's "created" event for a file still being written, while a rename reads as complete.
    stem, suffix = os.path.splitext(name)
    candidate, n = inbox / name, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = inbox / f"{stem}-{n}{suffix}"
    return candidate


def remove_stale_parts(inbox: Path, *, older_than: float = STALE_PART_SECONDS) -> int:
    """Remove the temp files of fetches that were killed (regular files named as ours, not touched for
    `older_than` seconds); returns how many."""
    cutoff, removed = time.time() - older_than, 0
    try:
        entries = list(os.scandir(inbox))
    except OSError:
        return 0
    for entry in entries:
        if not _OUR_PART.fullmatch(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue  # gone already, or not ours to remove
    if removed:
        log.info("removed %d partial downloads left by fetches that did not finish", removed)
    return removed


def _create_temp(inbox: Path, base: str) -> tuple[Path, int]:
    path = inbox / f".{base or 'download'}.{secrets.token_hex(4)}.part"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return path, os.open(path, flags, 0o666)


def _identify(path: Path) -> str:
    """The Pillow format of a complete download, from its bytes; only the formats pipeline.images.decode accepts."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with pillow_open(path, formats=_OPEN_AS) as img:
                fmt = img.format
                img.verify()
    except UnidentifiedImageError:
        raise FetchError("not_an_image", "the content is not an image coverwatch accepts") from None
    except Image.DecompressionBombError as exc:
        raise FetchError("too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FetchError("not_an_image", f"broken image data: {str(exc)[:200]}") from None
    return fmt


async def _download(url: str, out: BinaryIO, *, max_bytes: int, timeout: float, max_redirects: int,
                    deadline: float, transport: httpx.AsyncBaseTransport | None) -> str:
    """Follow redirects and write the body to `out`; return its sha256. `deadline` bounds it all, redirects
    included: per-read timeouts alone would let a server that drips a byte just inside each one hold it forever."""
    scope = asyncio.timeout(deadline)
    try:
        async with scope, _client(timeout, transport) as client:
            request = client.build_request("GET", url)
            for _ in range(max_redirects + 1):
                async with _network("http_error", "no valid HTTP response", request):
                    response = await client.send(request, stream=True)
                try:
                    if not response.has_redirect_location:
                        return await _copy_body(response, out, max_bytes)
                    request = response.next_request  # httpx resolves the Location; the body is never read
                finally:
                    await response.aclose()
                _check_url(str(request.url))
                log.debug("redirected to %s", request.url)
            raise FetchError("too_many_redirects", f"more than {max_redirects} redirects")
    except TimeoutError:
        if not scope.expired():
            raise  # an OSError of the inbox (ETIMEDOUT), not the deadline
        raise FetchError("timeout", f"not complete within the {deadline:g} s deadline") from None


def _client(timeout: float, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    # The system's CA store, no proxy or .netrc from the environment, the bytes as sent (no Content-Encoding),
    # redirects followed by _download (so that each hop's URL is checked before it is sent).
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False, transport=transport,
                             verify=ssl.create_default_context(),
                             headers={"User-Agent": _USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"})


@contextlib.asynccontextmanager
async def _network(code: str, what: str, request: httpx.Request):
    """Map httpx's errors to FetchError: not connected is unreachable, one wait too long a timeout, else `code`."""
    try:
        yield
    except httpx.TimeoutException:
        raise FetchError("timeout", f"{what}: no data within the timeout") from None
    except httpx.ConnectError as exc:
        raise FetchError("unreachable", f"cannot connect to {request.url.netloc.decode()}: {exc}") from None
    except httpx.HTTPError as exc:
        raise FetchError(code, f"{what}: {str(exc) or type(exc).__name__}") from None


async def _copy_body(response: httpx.Response, out: BinaryIO, max_bytes: int) -> str:
    if response.status_code != 200:
        raise FetchError("http_error", f"HTTP {response.status_code} {response.reason_phrase}".strip())
    declared = _content_length(response)
    if declared is not None and declared > max_bytes:
        raise FetchError("too_large", f"Content-Length {declared} > watch.max_bytes {max_bytes}")
    digest, total = hashlib.sha256(), 0
    async with _network("truncated", "the connection dropped mid-body", response.request):
        async for chunk in response.aiter_raw():  # each read as it arrives: the cap holds before more is taken
            total += len(chunk)
            if total > max_bytes:
                raise FetchError("too_large", f"more than watch.max_bytes {max_bytes} bytes")
            out.write(chunk)
            digest.update(chunk)
    if declared is not None and total < declared:
        raise FetchError("truncated", f"got {total} of {declared} bytes")
    return digest.hexdigest()


def _content_length(response: httpx.Response) -> int | None:
    """The declared body size (h11 has checked it is a number); None when chunked or not given."""
    value = response.headers.get("Content-Length")
    return None if value is None or "Transfer-Encoding" in response.headers else int(value)
