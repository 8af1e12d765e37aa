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
