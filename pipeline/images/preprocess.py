"""Images into model input, exactly as Ultralytics prepares them for inference, but from arrays and faster.

    >>> img = decode_for_model(data, max_pixels=89_478_485, task="detect", imgsz=640)
    >>> x, geometry = letterbox(img.rgb, 640)      # detect: 640x640 uint8, gray (114) borders
    >>> x = center_crop(img.rgb, 224)              # classify: shortest side 224 (PIL bilinear), centre crop

A JPEG much larger than the model input is decoded at 1/2, 1/4 or 1/8 scale inside libjpeg (`Image.draft`, a
DCT-domain downscale): the expensive full-size decode is skipped and the resize that follows starts smaller.
Widths, heights and normalised boxes always refer to the ORIGINAL image, EXIF orientation applied.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from pipeline.images.decode import MAX_ASPECT, open_checked, to_rgb  # the same opening, checks and conversions as decode

PAD_VALUE = 114  # Ultralytics' LetterBox padding
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_DRAFT_FORMATS = ("JPEG", "MPO")
CROP_FIRST_ASPECT = 4  # classify: at most imgsz x 4*imgsz pixels are ever resized to


@dataclass(frozen=True, slots=True)
class ModelImage:
    image: Image.Image | np.ndarray | None  # RGB, oriented; may be smaller than the original (draft)
    width: int  # original size, oriented
    height: int
    orientation: int  # the EXIF orientation that was applied (1: none)

    @property
    def rgb(self) -> np.ndarray | None:
        """HxWx3 uint8 (a copy when the pixels are still a Pillow image: ask once)."""
        return None if self.image is None else np.asarray(self.image)


def decode_for_model(data: bytes, *, max_pixels: int, task: str, imgsz: int, max_aspect: float = MAX_ASPECT
                     ) -> ModelImage:
    """Decode like pipeline.images.decode.decode_image (same checks, same reason codes), drafting big JPEGs down."""
    stored: list[tuple[int, int]] = []  # the size as stored, before any draft shrinks the decode

    def draft(img: Image.Image) -> None:
        stored.append(img.size)
        if img.format in _DRAFT_FORMATS:
            img.draft("RGB", draft_request(*img.size, task, imgsz))

    img = open_checked(io.BytesIO(data), max_pixels=max_pixels, max_aspect=max_aspect, before_load=draft)
    (w, h), orientation = stored[0], img.getexif().get(0x0112, 1)
    # The common case (an upright RGB photo) stays a Pillow image, which center_crop resizes without a copy to
    # numpy and back (~0.5 ms of ~5); anything else goes through decode's own conversions.
    pixels = img if img.mode == "RGB" and orientation == 1 else to_rgb(img).rgb
    width, height = (h, w) if orientation in _TRANSPOSED else (w, h)
    return ModelImage(pixels, width, height, orientation if orientation in range(1, 9) else 1)


def draft_request(w: int, h: int, task: str, imgsz: int) -> tuple[int, int]:
    """The smallest size (stored orientation) the resize needs; libjpeg picks a scale that stays at or above it.

    Both resizes below are symmetric in width and height, so a 90-degree EXIF turn does not change the answer.

    >>> draft_request(4000, 3000, "detect", 640)    # letterbox to 640x480: libjpeg decodes at 1/4, 1000x750
    (640, 480)
    """
    side = max(w, h) if task == "detect" else min(w, h)
    return max(1, -(-w * imgsz // side)), max(1, -(-h * imgsz // side))  # integer ceil: no float error


def letterbox(rgb: np.ndarray, imgsz: int, stride: int | None = None) -> tuple[np.ndarray, tuple]:
    """Ultralytics' LetterBox: resize to fit in imgsz x imgsz (cv2 bilinear), pad with 114.

    With `stride`, pad only up to a multiple of it (LetterBox(auto=True), what `yolo predict` does for one image:
    a 4:3 photo at 640 becomes 640x480, a quarter less work); without, pad to the full square.
    Returns the image and (gain_x, gain_y, pad_x, pad_y) to map boxes back, as ultralytics.utils.ops.scale_boxes.
    """
    h, w = rgb.shape[:2]
    r = min(imgsz / h, imgsz / w)
    nw, nh = max(round(w * r), 1), max(round(h * r), 1)
    if (nw, nh) != (w, h):
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = imgsz - nw, imgsz - nh
    if stride:
        dw, dh = dw % stride, dh % stride
    top, bottom, left, right = round(dh / 2 - 0.1), round(dh / 2 + 0.1), round(dw / 2 - 0.1), round(dw / 2 + 0.1)
    out = cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return out, (nw / w, nh / h, left, top)


def center_crop(rgb: np.ndarray | Image.Image, imgsz: int) -> np.ndarray:
    """Ultralytics' classify_transforms(imgsz) up to ToTensor: torchvision Resize(imgsz) + CenterCrop(imgsz) on PIL.

    Past `CROP_FIRST_ASPECT`, only the part that survives the crop is resized (Pillow's `box`: the same sampling
    grid and filter support, values within 1 of the full resize): resizing the whole image made a 1x80000 PNG
    96 x 7,680,000 pixels (2 GB) at imgsz 96. Up to it, the full resize, bit for bit what Ultralytics does.
    """
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(imgsz * long / short)  # torchvision truncates
    size = (imgsz, new_long) if w <= h else (new_long, imgsz)
    left, top = int(round((size[0] - imgsz) / 2.0)), int(round((size[1] - imgsz) / 2.0))
    if size == (w, h) or new_long <= CROP_FIRST_ASPECT * imgsz:
        if size != (w, h):
            img = img.resize(size, Image.BILINEAR)
        return np.asarray(img.crop((left, top, left + imgsz, top + imgsz)))
    sx, sy = w / size[0], h / size[1]  # source pixels per resized pixel
    box = (left * sx, top * sy, (left + imgsz) * sx, (top + imgsz) * sy)
    return np.asarray(img.resize((imgsz, imgsz), Image.BILINEAR, box=box))


def to_nchw(batch: np.ndarray) -> np.ndarray:
    """NxHxWx3 uint8 RGB -> Nx3xHxW float32 in 0..1 (Ultralytics divides by 255 too, in float32)."""
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
    x /= np.float32(255)  # in place: the same values, one 16x3x640x640 float buffer less per batch
    return x
