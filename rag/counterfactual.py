"""Replaced images: the counterfactual behind MMed-RAG's cross-modality pairs and copy-reference rate
(docs/design.md §7).

A question's image is swapped for Gaussian noise or for a real image from another domain while the
evidence stays the same. A model that still gives the same answer read it off the evidence and
ignored the picture. The replacement has the original's size, so every processor cuts it into the
same number of patches (dynamic-resolution models such as Qwen2-VL included) and its pixel values
can stand in for the original's row for row.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from rag.encoders import load_rgb

REPLACEMENTS = ("noise", "other-domain", "mixed")


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """Gaussian noise around mid-grey, of the given (width, height)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(127.5, 64.0, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def stable_seed(text: str) -> int:
    """A seed from a record id, the same on every machine and run (Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little")


def replaced_image(original: Image.Image, key: str, domain: str, kind: str,
                   pool: dict[str, Sequence[Path]] | None = None) -> tuple[Image.Image, str]:
    """The image that replaces `original` for the record `key`, and what it is ("noise" or "<domain>:<file>").

    kind "noise": Gaussian noise. "other-domain": an image drawn (by `key`) from another domain of
    `pool` (domain -> image paths). "mixed": half of the records get each, decided by `key`."""
    if kind not in REPLACEMENTS:
        raise ValueError(f"replacement must be one of {REPLACEMENTS}, got {kind!r}")
    seed = stable_seed(key)
    others = sorted(d for d in (pool or {}) if d != domain and pool[d])
    if kind == "mixed":
        kind = "other-domain" if seed % 2 and others else "noise"
    if kind == "noise":
        return noise_image(original.size, seed), "noise"
    if not others:
        raise ValueError(f"no image from a domain other than {domain!r} to replace {key}'s image with; "
                         "use replacement 'noise' or a corpus with several image domains")
    other = others[seed % len(others)]
    path = pool[other][(seed // 7) % len(pool[other])]
    return load_rgb(path).resize(original.size, Image.BICUBIC), f"{other}:{Path(path).name}"
