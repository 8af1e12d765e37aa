"""pipeline.images.phash: the hash of a decoded image, its distance, and the band probes that index it."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from pipeline.images.phash import MAX_BITS, bands, distance, from_db, near_pairs, perceptual_hash, probes, to_db
from pipeline.images.preprocess import decode_for_model
from tests.conftest import coco_images


def _hash(data: bytes) -> int:
    return perceptual_hash(decode_for_model(data, max_pixels=10_000_000, task="classify", imgsz=224).image)


def _jpeg(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", **kw)
    return out.getvalue()


def test_copies_are_a_few_bits_apart_and_distinct_photos_many():
    photos = [p.read_bytes() for p in coco_images(6)]
    hashes = [_hash(d) for d in photos]
    img = Image.open(io.BytesIO(photos[0])).convert("RGB")
    w, h = img.size
    copies = [_jpeg(img, quality=60), _jpeg(img.resize((w // 2, h // 2), Image.LANCZOS), quality=90),
              _jpeg(img.crop((w // 100, h // 100, w - w // 100, h - h // 100)), quality=90)]
    assert [distance(hashes[0], _hash(c)) <= 6 for c in copies] == [True, True, True]
    assert min(distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 12


def test_the_hash_is_imagehashs_phash_bit_for_bit():
    """The DCT is ours (two matrix products, no scipy import); the bits are ImageHash's, on real photos, on
    noise and on a smooth gradient."""
    import imagehash

    rng = np.random.default_rng(7)
    images = [Image.open(p).convert("RGB") for p in coco_images(24)]
    images += [Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)) for _ in range(20)]
    images.append(Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (64, 1))).convert("RGB"))
    for img in images:
        thumb = img.convert("L").resize((32, 32), Image.LANCZOS, reducing_gap=3.0)
        theirs = int.from_bytes(np.packbits(imagehash.phash(thumb).hash.flatten()).tobytes(), "big")
        assert perceptual_hash(img) == theirs


def test_a_numpy_image_hashes_like_the_same_pillow_image():
    img = Image.open(coco_images(1)[0]).convert("RGB")
    import numpy as np

    assert perceptual_hash(np.asarray(img)) == perceptual_hash(img)


def test_the_hash_survives_the_signed_column_and_splits_into_bands():
    for h in (0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1):
        assert -(1 << 63) <= to_db(h) < 1 << 63 and from_db(to_db(h)) == h
    assert bands(0x0123_4567_89AB_CDEF) == (0x0123, 0x4567, 0x89AB, 0xCDEF)
    assert distance(0b1011, 0b0110) == 3


@pytest.mark.parametrize(("max_bits", "per_band"), [(0, 1), (3, 1), (4, 17), (7, 17), (8, 137), (MAX_BITS, 137)])
def test_probes_per_band_grow_with_the_threshold(max_bits, per_band):
    assert len(set(probes(0xBEEF, max_bits))) == len(probes(0xBEEF, max_bits)) == per_band
    assert probes(0xBEEF, max_bits)[0] == 0xBEEF


def test_any_hash_within_the_threshold_shares_a_probed_band():
    """The pigeonhole promise the index rests on, on random pairs at every distance up to MAX_BITS."""
    rnd = random.Random(7)
    for _ in range(2000):
        h = rnd.getrandbits(64)
        t = rnd.randint(0, MAX_BITS)
        other = h
        for bit in rnd.sample(range(64), rnd.randint(0, t)):
            other ^= 1 << bit
        assert any(b in probes(a, t) for a, b in zip(bands(h), bands(other)))


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (1, 2, 3), (200, 30, 90)])
def test_a_flat_image_has_no_hash(colour):
    """Every blank image would share one hash and look like every other blank image."""
    assert perceptual_hash(Image.new("RGB", (64, 48), colour)) is None


def test_near_pairs_are_the_pairs_within_the_threshold():
    rnd = random.Random(3)
    base = [rnd.getrandbits(64) for _ in range(30)]
    hashes = base + [h ^ (1 << rnd.randrange(64)) ^ (1 << rnd.randrange(64)) for h in base[:10]] + [None]
    every = sorted((i, j, distance(a, b)) for i, a in enumerate(hashes) for j, b in enumerate(hashes)
                   if i < j and a is not None and b is not None and distance(a, b) <= 6)
    assert near_pairs(hashes, 6) == every and len(every) >= 10
    assert near_pairs(hashes, 0) == []
