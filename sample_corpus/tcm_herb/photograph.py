"""A photograph of a herb's crude drug as dispensed: pieces of one batch on a tray, paper, cloth or plate.

The pieces come from a per-herb batch fixed by the case's params (their sizes, outlines and surface
marks), so the six photographs of one herb show the same batch; the rng of a photograph only
changes the acquisition: which pieces, where, zoom, background, light and noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sample_corpus.acquisition import photo_variant
from sample_corpus.domain import IMAGE_SIZE
from sample_corpus.tcm_herb.pieces import PIECES
from sample_corpus.tcm_herb.primitives import RGB, Prim, shaded

# Pieces in a herb's batch; one photograph shows a subset of at most MAX_PIECES of them.
BATCH_SIZE = 128
MAX_PIECES = 110
# Zoom range of the photographs: pixels per millimetre of crude drug (before the clip to 7-100 px).
PIXELS_PER_MM = (2.0, 3.0)

# Backgrounds: (kind, base colours). A photograph picks one kind and one colour with jitter.
_BACKGROUNDS: tuple[tuple[str, tuple[RGB, ...]], ...] = (
    ("paper", ((238, 232, 216), (246, 244, 238), (222, 212, 190), (204, 194, 172))),
    ("cloth", ((52, 64, 92), (128, 34, 34), (204, 198, 186), (44, 44, 46), (72, 92, 62))),
    ("tray", ((176, 134, 88), (122, 86, 56), (212, 182, 132))),
    ("plate", ((242, 242, 238), (230, 236, 240))),
)
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE


def _background(rng: np.random.Generator) -> tuple[np.ndarray, RGB]:
    """Tray, paper, cloth or a plate on a table, as a float array; also its mean colour."""
    kind, colours = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    base = np.asarray(colours[int(rng.integers(len(colours)))], dtype=np.float32) + rng.normal(0, 6, 3)
    canvas = np.broadcast_to(base, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    if kind == "cloth":
        f = rng.uniform(90, 140)
        weave = np.sin(_XX * f) * np.sin(_YY * f) * rng.uniform(5, 10)
        canvas = canvas + weave[..., None]
    elif kind == "tray":  # wood grain along one axis and a darker rim
        along = _XX if rng.random() < 0.5 else _YY
        across = _YY if along is _XX else _XX
        grain = np.sin(across * rng.uniform(40, 80) + 3 * np.sin(along * rng.uniform(3, 7))) * rng.uniform(6, 12)
        canvas = canvas + grain[..., None]
        edge = np.minimum(np.minimum(_XX, 1 - _XX), np.minimum(_YY, 1 - _YY))
        canvas = canvas * np.where(edge < 0.04, 0.7, 1.0)[..., None]
    elif kind == "plate":  # a round plate on a darker table
        table = np.asarray((96, 74, 58), dtype=np.float32) + rng.normal(0, 10, 3)
        radius = rng.uniform(0.46, 0.6)
        r = np.hypot(_XX - 0.5 - rng.normal(0, 0.03), _YY - 0.5 - rng.normal(0, 0.03))
        canvas = np.where((r < radius)[..., None], canvas, table)
        canvas = canvas * np.where(np.abs(r - radius * 0.9) < 0.01, 0.9, 1.0)[..., None]
    else:  # paper: faint long fibres
        canvas = canvas + (np.sin(_XX * 300 + _YY * 40) * 2)[..., None]
    return canvas, tuple(int(v) for v in canvas.mean(axis=(0, 1)))  # type: ignore[return-value]


@dataclass
class _Placed:
    """One piece of the batch as laid out in a photograph: rotated, zoomed and moved."""

    prims: list[Prim]
    angle: float
    scale: float
    x: float
    y: float

    def points(self, pts: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)) -> list[float]:
        """Local points placed in the image, flattened as x0, y0, x1, y1, ... (what PIL takes)."""
        c, s = np.cos(self.angle) * self.scale, np.sin(self.angle) * self.scale
        return (pts @ np.array([[c, s], [-s, c]]) + (self.x + shift[0], self.y + shift[1])).ravel().tolist()

    def render(self, draw: ImageDraw.ImageDraw, shadow_offset: tuple[float, float] | None = None) -> None:
        """Paint the piece, or with `shadow_offset` only its silhouette (255) shifted by the offset."""
        for prim in self.prims:
            if shadow_offset is not None and not prim.body:
                continue
            pts = self.points(prim.pts, shadow_offset or (0.0, 0.0))
            colour: RGB | int = 255 if shadow_offset is not None else prim.colour
            if prim.kind == "poly":
                draw.polygon(pts, fill=colour, outline=None if shadow_offset is not None else prim.outline)
            elif prim.kind == "line":
                draw.line(pts, fill=colour, width=max(1, int(round(prim.width * self.scale))), joint="curve")
            else:
                r = prim.width * self.scale
                for x, y in zip(pts[::2], pts[1::2]):
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def _reference_length(p: dict[str, Any]) -> float:
    """Piece length in pixels at the middle zoom: the scale at which the batch is built."""
    return float(np.clip(p["size_mm"] * np.mean(PIXELS_PER_MM) * p["size_scale"], 7, 100))


class _Batch:
    """The herb's batch of pieces (outlines and surface marks) at the reference length.

    Pieces depend only on `case.params` and their index; each is built the first time a photograph
    shows it and kept, because a case is photographed six times and building pieces costs more than
    painting them.
    """

    def __init__(self, p: dict[str, Any]) -> None:
        self.p = p
        batch = np.random.default_rng(p["batch_seed"])
        self.size_var = batch.uniform(0.75, 1.2, BATCH_SIZE)
        self.aspect_var = batch.uniform(0.85, 1.15, BATCH_SIZE)
        self.shade_var = batch.uniform(0.88, 1.08, BATCH_SIZE)
        tint = np.asarray(p["tint"])
        self.colour = np.asarray(p["colour"]) + tint
        self.secondary = np.asarray(p["secondary_colour"]) + tint
        self.length = _reference_length(p)
        self.pieces: dict[int, list[Prim]] = {}

    def piece(self, i: int) -> list[Prim]:
        if i not in self.pieces:
            p = self.p
            L = self.length * self.size_var[i]
            W = max(1.5, L / (p["aspect"] * self.aspect_var[i]))
            shade = self.shade_var[i]
            self.pieces[i] = PIECES[p["form"]](L, W, shaded(self.colour, shade), shaded(self.secondary, shade),
                                               p["texture"], p["curl"], p["irregularity"],
                                               np.random.default_rng([p["batch_seed"], i]))
        return self.pieces[i]


@lru_cache(maxsize=16)
def _batch(params_key: str) -> _Batch:
    """The batch of the case whose params serialise (as sorted JSON) to `params_key`."""
    return _Batch(json.loads(params_key))


def _clumped(p: dict[str, Any]) -> bool:
    """Pieces drawn as a tangle or tuft fill a square around them, not a thin strip."""
    return (p["texture"] in ("filamentous", "woolly") or p["form"] == "stamen"
            or (p["form"] == "root" and p["aspect"] > 10))


def photograph(p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    """One photograph of the herb whose appearance is `p` (the case's params)."""
    canvas, mean_bg = _background(rng)
    placed = _place(p, rng)

    shadow = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    shadow_draw = ImageDraw.Draw(shadow)
    dx, dy = rng.uniform(1.5, 4.0, 2)
    for piece in placed:
        piece.render(shadow_draw, shadow_offset=(float(dx), float(dy)))
    shadow_arr = np.asarray(shadow.filter(ImageFilter.BoxBlur(2)), dtype=np.float32) / 255.0
    canvas = canvas * (1 - rng.uniform(0.3, 0.5) * shadow_arr)[..., None]

    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for piece in placed:
        piece.render(draw)

    # Light falls from one side, with a soft vignette.
    angle = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.05, 0.18) * ((_XX - 0.5) * np.cos(angle) + (_YY - 0.5) * np.sin(angle))
    light -= rng.uniform(0.0, 0.25) * ((_XX - 0.5) ** 2 + (_YY - 0.5) ** 2)
    arr = np.asarray(img, dtype=np.float32) * light[..., None]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return photo_variant(img, rng, max_rotate=10.0, scale=(0.92, 1.1), lighting=(0.88, 1.12),
                         noise_sd=(1.5, 5.0), blur=0.7, fill=mean_bg)


def _place(p: dict[str, Any], rng: np.random.Generator) -> list[_Placed]:
    """Choose pieces of the batch, zoom, and lay them out as a scatter or a pile."""
    batch = _batch(json.dumps(p, sort_keys=True))
    length = float(np.clip(p["size_mm"] * rng.uniform(*PIXELS_PER_MM) * p["size_scale"], 7, 100))
    width = length / p["aspect"]
    footprint = length * (0.5 * length if _clumped(p) else max(width, length / 6))
    count = int(np.clip(rng.uniform(0.22, 0.42) * IMAGE_SIZE ** 2 / footprint * p["count_scale"], 3, MAX_PIECES))
    chosen = rng.choice(BATCH_SIZE, size=count, replace=False)

    pile = rng.random() < 0.4
    centre = IMAGE_SIZE / 2 + rng.normal(0, 12, 2)
    spread = IMAGE_SIZE * rng.uniform(0.18, 0.26)
    margin = 0.25 * length
    scale = length / _reference_length(p)
    placed = []
    for i in chosen:
        if pile:
            x, y = np.clip(rng.normal(centre, spread), margin, IMAGE_SIZE - margin)
        else:
            x, y = rng.uniform(margin, IMAGE_SIZE - margin, 2)
        placed.append(_Placed(batch.piece(int(i)), float(rng.uniform(0, 2 * np.pi)), scale, float(x), float(y)))
    return placed
