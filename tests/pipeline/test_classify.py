"""ClassifyStep on real Ultralytics models (tiny, trained once per session) and real coco images (tests/data/coco24)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.images import preprocess
from pipeline.inference import model_loader
from pipeline.inference.classify import ClassifyStep
from pipeline.errors import ModelUnavailable, Rejected
from pipeline.inference.steps import Item, Result
from tests.conftest import coco_images, copy_images

pytestmark = [pytest.mark.slow, pytest.mark.ultralytics]

DET_SZ, CLS_SZ = 96, 32
LABEL_LINE = re.compile(r"^\d+ [01]\.\d{6} [01]\.\d{6} [01]\.\d{6} [01]\.\d{6}$")


@pytest.fixture
def make_step(request):
    """ClassifyStep with test defaults for `weights` (task from the file); every step is closed afterwards."""
    steps = []

    def make(weights: Path, **kw) -> ClassifyStep:
        cls = "cls-" in str(weights)
        args = dict(task="classify" if cls else "detect", weights=weights, imgsz=CLS_SZ if cls else DET_SZ,
                    batch=8, conf=0.25, backend="onnx", device="cpu", review_dir=None, review_below=0.0,
                    max_pixels=50_000_000)
        args.update(kw)
        if "allowed_roots" not in args:
            args["allowed_roots"] = [Path(args["weights"]).parents[2]]
        step = ClassifyStep(**args)
        steps.append(step)
        return step

    yield make
    for s in steps:
        s.close()


def items(paths: list[Path]) -> list[Item]:
    return [Item(i, p, "0" * 64) for i, p in enumerate(paths, 1)]


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def rgb_of(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-12)


def same_boxes(d1: list, d2: list, min_iou: float = 0.9) -> bool:
    """Each confident box of one list has a box of the same class in the other (backends differ by ~1e-6)."""
    return all(any(c == c2 and iou(a[2:], b[2:]) >= min_iou for b in d2 for c2 in [b[0]])
               for a in d1 for c in [a[0]] if a[1] > 0.26)


# -- results on real images ------------------------------------------------------------------------------


def test_detect_results_on_coco_images(detect_weights, make_step, inbox):
    paths = copy_images(inbox, 16)
    out = make_step(detect_weights)(items(paths))
    names = model_loader.load_model(detect_weights, allowed_roots=[detect_weights.parent]).names
    assert all(isinstance(r, Result) for r in out)
    assert sum(bool(r.detections) for r in out) >= 4
    sha12 = model_loader.file_sha256(detect_weights)[:12]
    for path, r in zip(paths, out):
        assert (r.width, r.height) == size_of(path)
        assert (r.model_version, r.backend, r.imgsz) == (f"best@{sha12}", "onnx", DET_SZ)
        assert r.decode_ms > 0 and r.infer_ms > 0
        for cls, conf, x1, y1, x2, y2 in r.detections:
            assert cls in names and conf > 0.25
            assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1
        if r.detections:
            best = max(r.detections, key=lambda d: d[1])
            assert (r.predicted_class, r.confidence) == (best[0], best[1])
            assert [c for c, _ in r.top5] == list(dict.fromkeys(d[0] for d in r.detections))[:5]
        else:
            assert (r.predicted_class, r.confidence, r.top5) == (None, None, [])


def test_classify_results_on_coco_images(classify_weights, make_step, inbox):
    paths = copy_images(inbox, 16)
    out = make_step(classify_weights)(items(paths))
    assert {r.predicted_class for r in out} <= {"car", "chair", "person"}
    for path, r in zip(paths, out):
        assert (r.width, r.height) == size_of(path)
        assert len(r.top5) == 3  # min(5, number of classes)
        scores = [s for _, s in r.top5]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-4)
        assert (r.predicted_class, r.confidence) == tuple(r.top5[0])
        assert r.detections == [] and r.imgsz == CLS_SZ


def _ultralytics(weights: Path, paths: list[Path], imgsz: int, conf: float = 0.25):
    """Ultralytics' own predict, one image at a time, on the very arrays coverwatch decodes (BGR for Ultralytics)."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    # One call per image: a list of arrays is one batch to Ultralytics, letterboxed square unless shapes agree.
    return [model.predict(np.ascontiguousarray(np.asarray(rgb_of(p))[..., ::-1]), imgsz=imgsz, conf=conf,
                          verbose=False)[0] for p in paths]


@pytest.fixture
def no_draft(monkeypatch):
    """Decode at full size, as Ultralytics does, to compare with it exactly."""
    monkeypatch.setattr(preprocess, "draft_request", lambda w, h, task, imgsz: (w, h))


def test_detect_matches_ultralytics_predict(detect_weights, make_step, inbox, no_draft):
    paths = copy_images(inbox, 8)
    ours = make_step(detect_weights, backend="torch")(items(paths))
    for r, theirs in zip(ours, _ultralytics(detect_weights, paths, DET_SZ)):
        order = np.argsort(-theirs.boxes.conf.numpy(), kind="stable")
        expected = np.column_stack([theirs.boxes.conf.numpy(), theirs.boxes.xyxyn.numpy()])[order]
        got = np.array([d[1:] for d in r.detections]).reshape(-1, 5)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_classify_matches_ultralytics_predict(classify_weights, make_step, inbox, no_draft):
    paths = copy_images(inbox, 8)
    ours = make_step(classify_weights, backend="torch")(items(paths))
    for r, theirs in zip(ours, _ultralytics(classify_weights, paths, CLS_SZ)):
        probs = theirs.probs.data.numpy()
        assert r.top5 == [[theirs.names[i], pytest.approx(float(probs[i]), abs=1e-5)] for i in np.argsort(-probs)]


@pytest.mark.parametrize("which", ["detect", "classify"])
def test_onnx_and_torch_backends_agree(which, detect_weights, classify_weights, make_step, inbox):
    """The two networks agree number for number. A tiny model scores many boxes ~1.0 in several classes at
    once, so which class such a box takes (and so what NMS keeps) can flip on a 1e-7 difference: boxes are
    compared where the answer is clear."""
    weights = detect_weights if which == "detect" else classify_weights
    paths = copy_images(inbox, 16)
    onnx = make_step(weights, backend="onnx")(items(paths))
    torch = make_step(weights, backend="torch")(items(paths))
    assert [r.backend for r in onnx + torch] == ["onnx"] * 16 + ["torch"] * 16
    assert sum(r.predicted_class is not None for r in onnx) >= 4
    for a, b in zip(onnx, torch):
        if a.top5 and len(a.top5) > 1 and a.top5[0][1] - a.top5[1][1] > 1e-3:
            assert a.predicted_class == b.predicted_class
        assert a.confidence == pytest.approx(b.confidence, abs=1e-3)
    imgsz = DET_SZ if which == "detect" else CLS_SZ
    opened = [model_loader.open_model(weights, allowed_roots=[weights.parent], imgsz=imgsz, backend=b, device="cpu")
              for b in ("onnx", "torch")]
    rgb = [np.asarray(rgb_of(p)) for p in paths[:4]]
    x = preprocess.to_nchw(np.stack([preprocess.letterbox(r, imgsz)[0] if which == "detect" else
                                     preprocess.center_crop(r, imgsz) for r in rgb]))
    y_onnx, y_torch = (m.forward(x) for m in opened)
    assert y_onnx.shape == y_torch.shape
    if which == "detect":  # xywh in input pixels (a tiny model's run past the image), then class scores
        np.testing.assert_allclose(y_onnx[:, :4], y_torch[:, :4], atol=0.02)
        y_onnx, y_torch = y_onnx[:, 4:], y_torch[:, 4:]
    np.testing.assert_allclose(y_onnx, y_torch, atol=1e-3)


def _in_registry(src: Path, tmp_path: Path, version: str) -> Path:
    """A copy of `src` where the registry keeps a version's weights: models/VERSION/weights/best.pt."""
    weights = tmp_path / "models" / version / "weights" / "best.pt"
    weights.parent.mkdir(parents=True)
    shutil.copy(src, weights)
    return weights


def _export_of(weights: Path, imgsz: int) -> Path:
    """Where the ONNX export of `weights` at `imgsz` is cached: beside them, named by their sha256."""
    return weights.with_name(f"best.{model_loader.file_sha256(weights)[:12]}.{imgsz}.onnx")


def test_onnx_export_is_cached_beside_the_weights(detect_weights, make_step, inbox, tmp_path, monkeypatch):
    weights = _in_registry(detect_weights, tmp_path, "v7")
    paths = copy_images(inbox, 2)
    first = make_step(weights)(items(paths))
    onnx = _export_of(weights, DET_SZ)
    assert onnx.is_file() and first[0].backend == "onnx"
    assert sorted(p.name for p in weights.parent.iterdir()) == sorted(["best.pt", onnx.name])  # no temp left
    stamp = onnx.stat().st_mtime_ns

    def no_export(*a, **kw):
        raise AssertionError("exported again")

    from ultralytics import YOLO

    monkeypatch.setattr(YOLO, "export", no_export)
    second = make_step(weights)(items(paths))
    assert second[0].backend == "onnx" and onnx.stat().st_mtime_ns == stamp
    assert [r.detections for r in second] == [r.detections for r in first]


# -- awkward images --------------------------------------------------------------------------------------


def _rotated(upright: Image.Image, orientation: int) -> Image.Image:
    """Pixels stored turned, with the EXIF tag that tells a viewer to turn them back."""
    stored = upright.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    stored.info["exif"] = _exif(orientation)
    return stored


def _whole_blocks(img: Image.Image) -> Image.Image:
    """Cropped to sides that are a multiple of 8: a drafted decode averages the stored JPEG's 8x8 blocks, which
    then cover the same pixels in either orientation (a 640x428 photo turned 90 degrees would move the grid by
    4 px, a different small input that a 1-epoch model at 32 px may answer a few points differently)."""
    return img.crop((0, 0, img.width - img.width % 8, img.height - img.height % 8))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", [6, 8])
@pytest.mark.parametrize("which", ["detect", "classify"])
def test_exif_rotated_image_gives_the_upright_answer(orientation, which, detect_weights, classify_weights,
                                                     make_step, inbox):
    weights = detect_weights if which == "detect" else classify_weights
    upright = _whole_blocks(rgb_of(coco_images(3)[2]))
    upright.save(inbox / "upright.png")
    stored = _rotated(upright, orientation)
    stored.save(inbox / "turned.png", exif=stored.info["exif"])
    stored.save(inbox / "turned.jpg", exif=stored.info["exif"], quality=100, subsampling=0)
    upright.save(inbox / "upright.jpg", quality=100, subsampling=0)
    a, b, c, d = make_step(weights)(items([inbox / n for n in ("upright.png", "turned.png", "upright.jpg",
                                                                 "turned.jpg")]))
    assert (a.width, a.height) == (b.width, b.height) == (d.width, d.height) == upright.size
    assert a.predicted_class is not None  # an answer worth comparing
    assert (b.predicted_class, b.top5, b.detections) == (a.predicted_class, a.top5, a.detections)  # lossless
    assert d.predicted_class == c.predicted_class and d.confidence == pytest.approx(c.confidence, abs=0.05)


def _modes(src: Path, dest: Path) -> dict[str, Path]:
    rgb = rgb_of(src)
    out = {"cmyk.jpg": rgb.convert("CMYK"), "gray.jpg": rgb.convert("L"), "palette.png": rgb.convert("P"),
           "rgba.png": rgb.convert("RGBA")}
    for name, img in out.items():
        img.save(dest / name)
    gray16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(gray16).save(dest / "gray16.png")
    return {n: dest / n for n in [*out, "gray16.png"]}


@pytest.mark.parametrize("which", ["detect", "classify"])
def test_cmyk_gray_palette_rgba_and_16_bit_images_are_classified(which, detect_weights, classify_weights,
                                                                  make_step, inbox):
    src = coco_images(1)[0]
    files = _modes(src, inbox)
    with Image.open(files["gray16.png"]) as img:
        assert img.mode.startswith("I;16")
    out = make_step(detect_weights if which == "detect" else classify_weights)(items(list(files.values())))
    assert all(isinstance(r, Result) for r in out)
    assert {(r.width, r.height) for r in out} == {size_of(src)}


def test_truncated_jpeg_is_rejected_and_the_rest_of_the_batch_is_classified(detect_weights, make_step, inbox):
    paths = copy_images(inbox, 9)
    data = paths[4].read_bytes()
    paths[4].write_bytes(data[: len(data) // 2])
    out = make_step(detect_weights, batch=4)(items(paths))
    assert isinstance(out[4], Rejected) and out[4].code == "truncated_image"
    assert all(isinstance(r, Result) for i, r in enumerate(out) if i != 4)


def _big_jpeg(path: Path, factor: int = 4) -> Path:
    img = rgb_of(coco_images(1)[0])
    img.resize((img.width * factor, img.height * factor), Image.BICUBIC).save(path, quality=90)
    return path


def test_a_file_that_is_no_image_is_rejected_even_with_ultralytics_loaded(classify_weights, make_step, inbox):
    import ultralytics  # noqa: F401 - it patches Image.open to pip-install a HEIF plugin for unknown files

    (inbox / "fake.jpg").write_bytes(b"this is not a picture" * 100)
    (out,) = make_step(classify_weights)(items([inbox / "fake.jpg"]))
    assert isinstance(out, Rejected) and out.code == "not_an_image"


@pytest.mark.parametrize("which", ["detect", "classify"])
def test_the_model_on_all_cores_or_fewer_gives_the_same_answers(which, detect_weights, classify_weights, make_step,
                                                                inbox, monkeypatch):
    """On CPU the ONNX model runs on every core or leaves one to decoding, whichever pipeline.inference.threads measures to
    be faster: both are tried on a long enough stream, and which one ran never changes an answer."""
    used = []
    real = model_loader.onnx_forward

    def counting(path, *, device, threads=None):
        forward = real(path, device=device, threads=threads)
        return lambda batch: used.append(threads) or forward(batch)

    monkeypatch.setattr(model_loader, "onnx_forward", counting)
    monkeypatch.setattr(model_loader, "physical_cores", lambda: 2)
    weights = detect_weights if which == "detect" else classify_weights
    paths = copy_images(inbox, 10)

    def forget() -> None:  # what an earlier step decided (pipeline.inference.threads.PlanMemory), if it did
        for remembered in Path(weights).parent.glob("*.plan.json"):
            remembered.unlink()

    forget()
    streamed = make_step(weights, batch=1)(items(paths))  # 10 chunks: 4 on 2 threads, 4 on 1, then the faster
    assert set(used) == {1, 2}
    used.clear()
    forget()
    at_once = make_step(weights, batch=10)(items(paths))  # no plan remembered: every core, until measured
    assert set(used) == {2}
    for a, b in zip(streamed, at_once):
        assert [c for c, _ in a.top5] == [c for c, _ in b.top5] or a.top5[0][1] - a.top5[1][1] < 1e-3
        assert [p for _, p in a.top5] == pytest.approx([p for _, p in b.top5], abs=1e-4)
        assert same_boxes(a.detections, b.detections) and same_boxes(b.detections, a.detections)


@pytest.mark.parametrize(("task", "imgsz"), [("detect", 640), ("classify", 224)])
def test_big_jpeg_is_drafted_into_nearly_the_same_model_input(task, imgsz, inbox):
    from pipeline.images.decode import decode_image

    data = _big_jpeg(inbox / "big.jpg").read_bytes()
    drafted = preprocess.decode_for_model(data, max_pixels=10**8, task=task, imgsz=imgsz)
    full = decode_image(data, max_pixels=10**8)
    assert (drafted.width, drafted.height) == (full.width, full.height) == (2560, 1920)
    assert drafted.rgb.shape[:2] == (480, 640) if task == "detect" else (240, 320)  # libjpeg scaled 1/4, 1/8
    prep = (lambda rgb: preprocess.letterbox(rgb, imgsz)[0]) if task == "detect" else (
        lambda rgb: preprocess.center_crop(rgb, imgsz))
    diff = np.abs(prep(drafted.rgb).astype(int) - prep(full.rgb).astype(int))
    assert diff.mean() < 2.0  # of 255; less aliasing than a bilinear resize from full size, not more


def test_big_jpeg_is_drafted_and_gives_the_full_decode_answer(classify_weights, make_step, inbox, request):
    _big_jpeg(inbox / "big.jpg")
    drafted = make_step(classify_weights)(items([inbox / "big.jpg"]))[0]
    request.getfixturevalue("no_draft")
    full = make_step(classify_weights)(items([inbox / "big.jpg"]))[0]
    assert (drafted.width, drafted.height) == (full.width, full.height) == (2560, 1920)
    assert drafted.predicted_class == full.predicted_class
    assert drafted.confidence == pytest.approx(full.confidence, abs=0.05)


def test_draft_request_keeps_at_least_the_model_input():
    assert preprocess.draft_request(4000, 3000, "detect", 640) == (640, 480)
    assert preprocess.draft_request(3000, 4000, "classify", 224) == (224, 299)


# -- review ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["detect", "classify"])
def test_low_confidence_images_go_to_review_with_labelimg_files(which, detect_weights, classify_weights,
                                                                make_step, inbox, tmp_path):
    weights = detect_weights if which == "detect" else classify_weights
    review = tmp_path / "review"
    paths = copy_images(inbox, 3)
    step = make_step(weights, review_dir=review, review_below=1.0)
    first, second = step(items(paths)), step(items(paths[:1]))
    assert all(p.exists() for p in paths)  # copies: the ingest moves the originals afterwards
    names = model_loader.load_model(weights, allowed_roots=[weights.parent]).names
    assert (review / "classes.txt").read_text() == "".join(f"{n}\n" for n in names)
    stem = paths[0].stem
    assert (review / f"{stem}-1.jpg").read_bytes() == paths[0].read_bytes()  # a second copy, never overwritten
    for path, r in zip(paths, first):
        assert (review / path.name).read_bytes() == path.read_bytes()
        lines = (review / f"{path.stem}.txt").read_text().splitlines()
        assert all(LABEL_LINE.match(line) for line in lines)
        if which == "classify":
            assert lines == [f"{names.index(r.predicted_class)} 0.500000 0.500000 1.000000 1.000000"]
        else:
            assert len(lines) == len(r.detections)
            for line, (cls, _, x1, y1, x2, y2) in zip(lines, r.detections):
                assert line == "%d %.6f %.6f %.6f %.6f" % (names.index(cls), (x1 + x2) / 2, (y1 + y2) / 2,
                                                            x2 - x1, y2 - y1)
    assert isinstance(second[0], Result)


def test_review_copy_of_an_exif_rotated_image_is_stored_upright(classify_weights, make_step, inbox, tmp_path):
    upright = rgb_of(coco_images(1)[0])
    stored = _rotated(upright, 6)
    stored.save(inbox / "turned.jpg", exif=stored.info["exif"])
    step = make_step(classify_weights, review_dir=tmp_path / "review", review_below=1.0)
    step(items([inbox / "turned.jpg"]))
    with Image.open(tmp_path / "review" / "turned.jpg") as copy:
        assert copy.size == upright.size and copy.getexif().get(0x0112, 1) == 1


def test_confident_images_are_not_reviewed(classify_weights, make_step, inbox, tmp_path):
    step = make_step(classify_weights, review_dir=tmp_path / "review", review_below=0.0)
    step(items(copy_images(inbox, 2)))
    assert not (tmp_path / "review").exists() or not any((tmp_path / "review").glob("*.jpg"))


# -- which model -----------------------------------------------------------------------------------------


def test_hot_swap_between_calls_records_each_version(detect_weights, classify_weights, make_step, inbox):
    answers = iter([("v1", detect_weights), ("v2", classify_weights)])
    asked = []

    def champion():
        asked.append(1)
        return next(answers)

    step = make_step(detect_weights, model_source=champion, allowed_roots=[detect_weights.parents[2],
                                                                           classify_weights.parents[2]])
    paths = copy_images(inbox, 12)
    first, second = step(items(paths[:7])), step(items(paths[7:]))
    assert len(asked) == 2  # once per call
    assert [r.model_version for r in first + second] == ["v1"] * 7 + ["v2"] * 5
    assert all(len(r.top5) == 3 and r.detections == [] for r in second)  # the classifier answered


def test_model_source_none_falls_back_to_the_configured_weights(detect_weights, make_step, inbox):
    step = make_step(detect_weights, model_source=lambda: None)
    (r,) = step(items(copy_images(inbox, 1)))
    assert r.model_version.startswith("best@")


def test_pretrained_name_offline_leaves_every_item_awaiting_model(make_step, inbox, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    models = tmp_path / "models"
    models.mkdir()
    step = make_step(Path("yolo11n.pt"), allowed_roots=[models])
    out = step(items(copy_images(inbox, 3)))
    assert len(out) == 3 and all(isinstance(o, ModelUnavailable) for o in out)
    assert str(out[0]) == ("model.weights: yolo11n.pt is not on disk and cannot be downloaded offline; images "
                           "wait as awaiting_model until a model is trained and promoted")
    assert out[0].code == "awaiting_model" and not any(models.iterdir())


def test_weights_outside_the_allowed_roots_are_refused(detect_weights, make_step, inbox):
    shutil.copy(detect_weights, inbox / "evil.pt")
    link = detect_weights.parent / "link.pt"
    os.symlink(inbox / "evil.pt", link)
    try:
        for weights in (inbox / "evil.pt", link):
            step = make_step(weights, allowed_roots=[detect_weights.parents[2]])
            out = step(items(copy_images(inbox, 1, ["a.jpg"])))
            assert isinstance(out[0], model_loader.WeightsRefused)
            assert "never loaded from a drop folder" in str(out[0])
    finally:
        link.unlink()
    with pytest.raises(model_loader.WeightsRefused):
        model_loader.load_model(detect_weights.with_suffix(".onnx"), allowed_roots=[detect_weights.parents[2]])


# -- through the ingest, into the database ---------------------------------------------------------------


def test_ingest_with_classify_step_writes_prediction_and_detection_rows(detect_weights, make_step, home, engine):
    from sqlalchemy import func, select

    from pipeline.intake.ingest import ingest_batch
    from pipeline.intake.core import Layout
    from storage.db import session_scope
    from storage.tables import Detection, File, Prediction

    paths = copy_images(home / "inbox", 6)
    (home / "inbox" / "broken.jpg").write_bytes(paths[0].read_bytes()[:5000])
    step = make_step(detect_weights, review_dir=home / "review", review_below=0.4)
    layout = Layout(home, home / "archive", home / "quarantine")
    report = ingest_batch(engine, layout, "inbox", home / "inbox", [*paths, home / "inbox" / "broken.jpg"], step,
                          max_bytes=10_000_000)
    assert (report.processed, report.quarantined) == (6, 1)
    with session_scope(engine) as s:
        preds = s.scalars(select(Prediction)).all()
        assert len(preds) == 6 and {p.backend for p in preds} == {"onnx"}
        assert all(p.model_version.startswith("best@") and p.width and p.infer_ms for p in preds)
        assert s.scalar(select(func.count()).select_from(Detection)) > 0
        for p in preds:
            if p.detections:
                top = max(p.detections, key=lambda d: d.confidence)
                assert (top.class_name, top.confidence) == (p.predicted_class, p.confidence)
                assert all(0 <= d.x1 <= d.x2 <= 1 and 0 <= d.y1 <= d.y2 <= 1 for d in p.detections)
        assert s.scalar(select(File.reason).where(File.original_name == "broken.jpg")) == "truncated_image"
    assert not any((home / "inbox").iterdir())


# -- the cold path: a cached export starts without torch --------------------------------------------------


def _home_with_weights(home: Path, weights: Path, task: str, imgsz: int, **model) -> Path:
    from tests.watcher.conftest import configure

    target = home / "models" / "v1" / "weights" / "best.pt"
    target.parent.mkdir(parents=True)
    shutil.copy(weights, target)
    configure(home, task=task, model={"weights": "models/v1/weights/best.pt", "imgsz": imgsz, **model},
              watch={"settle_seconds": 0.0})
    return target


def test_coverwatch_process_on_a_cached_export_imports_neither_torch_nor_ultralytics(classify_weights, make_step,
                                                                                     home, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.watcher.conftest import predictions

    weights = _home_with_weights(home, classify_weights, "classify", CLS_SZ, device="cpu")
    make_step(weights, task="classify", imgsz=CLS_SZ)(items(copy_images(tmp_path / "warm", 1)))  # exports here
    copy_images(home / "inbox", 3)
    code = ("import sys\nfrom watcher.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('loaded', sorted(m for m in ('torch', 'torchvision', 'ultralytics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, "-c", str(home / "coverwatch.yaml"), "process"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert "exit 0" in out.stdout and "loaded []" in out.stdout, out.stdout + out.stderr
    preds = predictions(home)
    sha12 = model_loader.file_sha256(weights)[:12]
    assert len(preds) == 3 and {(p.backend, p.model_version) for p in preds} == {("onnx", f"best@{sha12}")}


def test_a_cached_export_gives_the_answers_of_the_weights(classify_weights, detect_weights, make_step, inbox,
                                                          tmp_path):
    """Names, task and stride read from the export's metadata are the .pt's: the same rows either way."""
    for weights in (classify_weights, detect_weights):
        loaded = model_loader.load_model(weights, allowed_roots=[weights.parents[2]])
        imgsz = CLS_SZ if loaded.task == "classify" else DET_SZ
        model_loader.export_onnx(loaded, imgsz)  # cached now (or already)
        model = model_loader.open_model(weights, allowed_roots=[weights.parents[2]], imgsz=imgsz, backend="onnx",
                                        device="cpu")
        assert model.loaded.yolo is None  # from the cached export alone
        assert (model.task, model.names, model.stride, model.end2end) == (loaded.task, loaded.names, loaded.stride,
                                                                          loaded.end2end)


def test_an_export_without_metadata_is_run_with_the_names_of_the_weights(detect_weights, make_step, inbox, tmp_path):
    import onnx

    weights = _in_registry(detect_weights, tmp_path, "v2")
    paths = copy_images(inbox, 2)
    first = make_step(weights)(items(paths))
    export = _export_of(weights, DET_SZ)
    proto = onnx.load(str(export))
    del proto.metadata_props[:]
    onnx.save(proto, str(export))
    model = model_loader.open_model(weights, allowed_roots=[weights.parents[2]], imgsz=DET_SZ, device="cpu")
    assert model.loaded.yolo is not None and model.backend == "onnx"  # the .pt told what the export did not
    assert [r.detections for r in make_step(weights)(items(paths))] == [r.detections for r in first]


def test_an_unreadable_export_is_made_again(classify_weights, make_step, inbox, tmp_path):
    weights = _in_registry(classify_weights, tmp_path, "v3")
    export = _export_of(weights, CLS_SZ)
    export.write_bytes(b"not an onnx file")
    (r,) = make_step(weights, task="classify", imgsz=CLS_SZ)(items(copy_images(inbox, 1)))
    assert isinstance(r, Result) and r.backend == "onnx" and export.stat().st_size > 1000


def test_cuda_that_is_not_there_falls_back_to_the_cpu(classify_weights, make_step, inbox, monkeypatch, caplog):
    monkeypatch.setattr(model_loader, "cuda_visible", lambda device: False)
    paths = copy_images(inbox, 2)
    on_cpu = make_step(classify_weights, device="cpu", backend="auto")(items(paths))
    on_cuda = make_step(classify_weights, device="cuda", backend="auto")(items(paths))
    assert {r.backend for r in on_cuda} == {"onnx"} and [r.top5 for r in on_cuda] == [r.top5 for r in on_cpu]
    assert "model.device: cuda:0 is not available here; classifying on the CPU" in caplog.text

