"""Files exactly as labelImg writes them (yolo_io.py and pascal_voc_io.py), made from the carried coco images."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.conftest import COCO, COCO_LABELS, coco_images


def coco_names() -> list[str]:
    return list(yaml.safe_load((COCO / "data.yaml").read_text())["names"].values())


def yolo_text(boxes: list[tuple[int, float, float, float, float]]) -> str:
    """labelImg's YOLO writer: one `"%d %.6f %.6f %.6f %.6f\\n"` line per box."""
    return "".join("%d %.6f %.6f %.6f %.6f\n" % box for box in boxes)


def write_classes(folder: Path, names: list[str]) -> Path:
    """labelImg's classes.txt: one name per line, each followed by a newline."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "classes.txt"
    path.write_bytes("".join(n + "\n" for n in names).encode("utf-8"))
    return path


def voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, int, int, int, int]]) -> bytes:
    """labelImg's Pascal VOC writer: lxml pretty print, two spaces turned into tabs, no XML declaration."""
    objs = "".join(
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
        f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n"
        f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for name, x1, y1, x2, y2 in objects)
    return (f"<annotation>\n\t<folder>covers</folder>\n\t<filename>{filename}</filename>\n"
            f"\t<path>C:\\Users\\SSAFY\\covers\\{filename}</path>\n\t<source>\n\t\t<database>Unknown</database>\n"
            f"\t</source>\n\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n"
            f"\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n{objs}</annotation>\n").encode("utf-8")


def coco_boxes(image: Path) -> list[tuple[int, float, float, float, float]]:
    path = COCO_LABELS / f"{image.stem}.txt"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        c, *xywh = line.split()
        out.append((int(c), *map(float, xywh)))
    return out


def labelled_images(start: int, n: int) -> list[Path]:
    """Carried coco images that have at least one box, from the `start`-th one; fewer than asked is an error
    (a test written for more images than tests/data carries would otherwise lose its point without a word)."""
    found = [p for p in coco_images() if coco_boxes(p)][start:start + n]
    if len(found) < n:
        raise ValueError(f"asked for {n} labelled images from #{start}; tests/data carries {len(found)} there")
    return found


def coco_drop(folder: Path, images: list[Path], order: list[str], *, what=("classes", "labels", "images")) -> None:
    """A labelImg YOLO drop of coco images whose classes.txt lists the coco names in `order`.

    `what` picks which parts to write now, so a test can drop labels and images in either order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = coco_names()
    if "classes" in what:
        write_classes(folder, order)
    for image in images:
        if "labels" in what:
            boxes = [(order.index(names[c]), *xywh) for c, *xywh in coco_boxes(image)]
            (folder / f"{image.stem}.txt").write_text(yolo_text(boxes), encoding="utf-8")
        if "images" in what:
            shutil.copy(image, folder / image.name)


def expected_boxes(image: Path) -> list[tuple[str, float, float, float, float]]:
    """What the dataset must say about a coco image, by class NAME, with the precision labelImg writes."""
    names = coco_names()
    return sorted((names[c], *(float("%.6f" % v) for v in xywh)) for c, *xywh in coco_boxes(image))


def same_boxes(a: list[tuple], b: list[tuple], tolerance: float = 1e-5) -> bool:
    """Equal names and coordinates within `tolerance` (a box clipped at the edge moves by ~1e-6)."""
    return len(a) == len(b) and all(
        x[0] == y[0] and all(abs(u - v) <= tolerance for u, v in zip(x[1:], y[1:])) for x, y in zip(a, b))
