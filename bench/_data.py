"""Where the benchmarks read their photos: coco128 beside the project (../shared/datasets/coco128) when it is
there, else the 24 images the tests carry (tests/data/coco24), so a fresh clone can run them too."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_COCO = ROOT.parent / "shared" / "datasets" / "coco128"
CARRIED_COCO = ROOT / "tests" / "data" / "coco24"


def coco_dir(given: Path | None = None) -> Path:
    """`given` if named, else the first of coco128 and coco24 that has images: images/train2017, labels/train2017,
    data.yaml."""
    for folder in [given] if given else [SHARED_COCO, CARRIED_COCO]:
        if any((folder / "images" / "train2017").glob("*.jpg")):
            return folder
    raise SystemExit(f"no coco images under {given or f'{SHARED_COCO} or {CARRIED_COCO}'}")


def coco_images(given: Path | None = None) -> list[Path]:
    return sorted((coco_dir(given) / "images" / "train2017").glob("*.jpg"))


PHONE_ORIENTATIONS = (6, 8, 3)  # the turns a phone stores most: held upright (6), the other way (8), upside down (3)
_STORED_TURN = {6: "ROTATE_90", 8: "ROTATE_270", 3: "ROTATE_180"}  # what makes the stored pixels of each


def phone_photos(dest: Path, count: int = 24, megapixels: float = 12.0) -> list[Path]:
    """Phone-like JPEGs made from the coco photos: each upscaled (bicubic) to ~`megapixels` MP, its pixels stored
    turned and tagged with the EXIF orientation that turns them back (6, 8, 3 in turn), quality 92. The pixels
    are smoother than a real 12 MP photo's (so the files are smaller), but decoding, orientation and drafting
    cost what they cost on a phone's JPEG."""
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(coco_images()[:count]):
        with Image.open(src) as img:
            upright = img.convert("RGB")
        scale = (megapixels * 1e6 / (upright.width * upright.height)) ** 0.5
        big = upright.resize((round(upright.width * scale), round(upright.height * scale)), Image.BICUBIC)
        orientation = PHONE_ORIENTATIONS[i % len(PHONE_ORIENTATIONS)]
        stored = big.transpose(getattr(Image.Transpose, _STORED_TURN[orientation]))
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = dest / f"phone_{i:03d}_{src.stem}.jpg"
        stored.save(path, quality=92, exif=exif.tobytes())
        out.append(path)
    return out
