"""Perceptual hashes: the same cover photographed twice, or saved again smaller, has nearly the same 64 bits.

    >>> h = perceptual_hash(image)            # an image already decoded (and drafted down) for the model
    >>> distance(h, perceptual_hash(copy))    # differing bits: a re-saved or 0.5x copy is 0-2, distinct photos ~30
    1

ImageHash's pHash (the DCT of a 32x32 grey thumbnail, 8x8 low frequencies against their median). It is computed
from the pixels coverwatch decodes anyway, never from a second read of the file.

Looking a hash up among many (`bands`, `probes`): the 64 bits are four 16-bit bands, each stored in an indexed
column. Two hashes at most `t` bits apart have, by the pigeonhole principle, a band at most `t // 4` bits apart,
so the candidates are the rows with one band among the values that close to this hash's band (one value per
band up to t = 3, 17 up to 7, 137 up to 11), and only those are checked on all 64 bits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations

import numpy as np
from PIL import Image

BANDS = 4
BAND_BITS = 16
THUMB = 32  # ImageHash's pHash: hash_size 8 x highfreq_factor 4
FLAT_LEVELS = 8  # a thumbnail spanning fewer grey levels has no structure to hash
MAX_BITS = 11  # watch.near_duplicate_bits' ceiling: 137 probes per band (12 would need 697)
_MASK = (1 << BAND_BITS) - 1


def _dct_rows(n: int, k: int) -> np.ndarray:
    """The first `k` rows of SciPy's unnormalised DCT-II matrix of size `n`: 2 cos(pi k (2i + 1) / 2n)."""
    i = np.arange(n)
    return 2.0 * np.cos(np.pi * np.arange(k)[:, None] * (2 * i[None, :] + 1) / (2 * n))


_DCT = _dct_rows(THUMB, 8)


def perceptual_hash(image: Image.Image | np.ndarray) -> int | None:
    """The 64-bit pHash of an RGB (or grey) image as an unsigned int, first DCT row in the high bits; None for a
    flat image (a blank page, a lens cap): with no structure every such image has the same hash.

    ImageHash's `phash` bit for bit (tests/pipeline/test_phash.py holds it to it), its 2-D DCT as two small
    matrix products of the 8 low frequencies: ImageHash's scipy.fftpack took 0.15 s to import on the first hash
    of a cold start, in the path of the first committed row."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    # ImageHash's own first step, done here so that its thumbnail can be judged: it then resizes nothing.
    # reducing_gap: a box reduction first, then Lanczos: 0.15 ms instead of 0.94 for a 640x480 photo, on the
    # per-image path; over coco128 it moves a hash by at most 2 bits (mean 0.1) from the plain resize.
    thumb = img.convert("L").resize((THUMB, THUMB), Image.LANCZOS, reducing_gap=3.0)
    lo, hi = thumb.getextrema()
    if hi - lo < FLAT_LEVELS:
        return None
    low = _DCT @ np.asarray(thumb, dtype=np.float64) @ _DCT.T  # dct(dct(pixels, axis=0), axis=1)[:8, :8]
    # Rounded: where the FFT gives an exact 0 (a symmetric image, a gradient), the products give +-1e-11, and
    # a median of 0 would then split those coefficients at random.
    low = np.round(low, 6)
    bits = (low > np.median(low)).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def distance(a: int, b: int) -> int:
    """How many of the 64 bits differ (the Hamming distance)."""
    return (a ^ b).bit_count()


def bands(h: int) -> tuple[int, ...]:
    """The four 16-bit bands, high bits first: what the indexed columns hold."""
    return tuple((h >> (BAND_BITS * (BANDS - 1 - i))) & _MASK for i in range(BANDS))


def probes(band: int, max_bits: int) -> list[int]:
    """The band values a hash within `max_bits` of this one may share with it in this band (itself first)."""
    radius = max(0, max_bits) // BANDS
    out = [band]
    for r in range(1, radius + 1):
        for flip in combinations(range(BAND_BITS), r):
            out.append(band ^ sum(1 << b for b in flip))
    return out


def near_pairs(hashes: Sequence[int | None], max_bits: int) -> list[tuple[int, int, int]]:
    """Every pair (i < j, bits apart) of `hashes` at most `max_bits` apart, found through the same band probes
    as the database lookup (in memory: the labelled images of a dataset build). None: no hash, no pair."""
    if max_bits <= 0:
        return []
    index: list[dict[int, list[int]]] = [defaultdict(list) for _ in range(BANDS)]
    for i, h in enumerate(hashes):
        if h is not None:
            for k, b in enumerate(bands(h)):
                index[k][b].append(i)
    found: dict[tuple[int, int], int] = {}
    for j, h in enumerate(hashes):
        if h is None:
            continue
        for k, b in enumerate(bands(h)):
            for value in probes(b, min(max_bits, MAX_BITS)):
                for i in index[k].get(value, ()):
                    if i < j and (i, j) not in found and (d := distance(hashes[i], h)) <= max_bits:
                        found[(i, j)] = d
    return sorted((i, j, d) for (i, j), d in found.items())


def to_db(h: int) -> int:
    """An unsigned 64-bit hash as the signed BIGINT both SQLite and PostgreSQL store."""
    return h - (1 << 64) if h >= 1 << 63 else h


def from_db(v: int) -> int:
    return v + (1 << 64) if v < 0 else v
