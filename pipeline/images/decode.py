"""Safe image handling: cheap checks on `lstat` first, then a header check before any pixel is decoded.

Nothing here follows a symlink, opens a FIFO or device, or loads a pickle.
"""

from __future__ import annotations

import os
import stat as statmod
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import Rejected

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
LABEL_EXTENSIONS = frozenset({".txt", ".xml"})
# Files that can execute code when loaded, or models: never touched beyond a rename into quarantine.
FORBIDDEN_EXTENSIONS = frozenset(
    {".pt", ".pth", ".pkl", ".pickle", ".onnx", ".ckpt", ".safetensors", ".engine", ".torchscript", ".joblib",
     ".npy", ".npz", ".h5", ".py", ".pyc", ".sh", ".exe", ".dll", ".so", ".bat", ".ps1", ".jar"}
)
PIL_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "MPO"}
MAX_ASPECT = 20.0  # watch.max_aspect's default


def check_entry(path: Path, *, max_bytes: int, allowed: frozenset[str] = IMAGE_EXTENSIONS) -> os.stat_result:
    """Reject on `lstat` and the name alone: no byte of the file is read. Returns the stat."""
    st = os.lstat(path)
    if statmod.S_ISLNK(st.st_mode):
        raise Rejected("symlink", f"symbolic link to {os.readlink(path)!r}, not followed")
    if not statmod.S_ISREG(st.st_mode):
        raise Rejected("not_regular_file")
    suffix = path.suffix.lower()
    if suffix in FORBIDDEN_EXTENSIONS:
        raise Rejected("forbidden_type", f"{suffix} files are never loaded from a drop folder")
    if suffix not in allowed:
        raise Rejected("unsupported_format", f"{suffix or 'no extension'} is not accepted here")
    if st.st_size == 0:
        raise Rejected("zero_bytes")
    if st.st_size > max_bytes:
        raise Rejected("too_large", f"{st.st_size} bytes > watch.max_bytes {max_bytes}")
    return st


def open_for_reading(path: Path) -> int:
    """Open without following links and without blocking on a FIFO swapped in after the check."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except PermissionError:
        raise Rejected("unreadable") from None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: it became a symlink
            raise Rejected("symlink") from None
        raise
    if not statmod.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Rejected("not_regular_file")
    return fd


@dataclass(frozen=True, slots=True)
class DecodedImage:
    rgb: np.ndarray  # HxWx3 uint8, EXIF orientation applied
    width: int
    height: int


def decode_image(data: bytes | Path, *, max_pixels: int, max_aspect: float = MAX_ASPECT) -> DecodedImage:
    """Decode to RGB uint8 with EXIF orientation; reject bombs before decoding and truncation after."""
    import io

    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    return to_rgb(open_checked(src, max_pixels=max_pixels, max_aspect=max_aspect))


def open_checked(src, *, max_pixels: int, max_aspect: float = MAX_ASPECT, before_load=None) -> Image.Image:
    """Open and fully load an image, with every check and reason code; `before_load(img)` may ask for a
    smaller decode (JPEG draft) once the header is known. The one place images from drop folders are opened."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = pillow_open(src)
            img.MAX_IMAGE_PIXELS = None  # our own cap, below, is the one in force
            w, h = img.size
            if w * h > max_pixels:
                raise Rejected("decompression_bomb", f"{w}x{h} = {w * h} pixels > watch.max_pixels {max_pixels}")
            if max(w, h) > max_aspect * min(w, h):
                raise Rejected("extreme_aspect", f"{w}x{h}: {max(w, h) / max(1, min(w, h)):.0f}:1 > "
                                                 f"watch.max_aspect {max_aspect:g}")
            if img.format not in PIL_FORMATS:
                raise Rejected("unsupported_format", f"{img.format} images are not accepted")
            if before_load is not None:
                before_load(img)
            img.load()
    except Rejected:
        raise
    except UnidentifiedImageError:
        raise Rejected("not_an_image") from None
    except Image.DecompressionBombError as exc:
        raise Rejected("decompression_bomb", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Rejected("truncated_image", str(exc)[:200]) from None
    return img


def pillow_open(src, **kwargs):
    """Pillow's own Image.open. Once imported, Ultralytics replaces Image.open with a wrapper that answers a file
    Pillow cannot identify by pip-installing and importing pi-heif (ModuleNotFoundError offline): a bad file in a
    drop folder must be `not_an_image`, never an install."""
    patches = sys.modules.get("ultralytics.utils.patches")
    return (getattr(patches, "_image_open", None) or Image.open)(src, **kwargs)


def to_rgb(img: Image.Image) -> DecodedImage:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits instead of clipping everything above 255 to white.
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / peak)).clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent covers (PNG downloads) go on white, as a viewer shows them, not on black.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    rgb = np.asarray(img.convert("RGB"))
    return DecodedImage(rgb, rgb.shape[1], rgb.shape[0])
