"""A histology scene: stain painted as primitives in tissue coordinates, and how a view of it is rendered.

A specimen's tissue is a list of batches of circles, polygons and lines, each painting one stain
layer (haematoxylin, eosin, erythrocytes, or clear glass). A view renders the scene through a
rotation and zoom into stain densities; colour follows the Beer-Lambert stain model used in digital
pathology (Ruifrok & Johnston 2001): optical density is a sum of the layer densities times their
colour vectors, and each patient's slide has its own stain hue and strength.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

from sample_corpus.domain import IMAGE_SIZE

# Tissue is laid out over [-EXTENT, EXTENT]^2. A view (zoom >= 0.85, any rotation, shift <= 15 px per
# axis) reaches 112 * sqrt(2) / 0.85 + 15 * sqrt(2) ~ 207 px from the centre, so it never runs out.
EXTENT = 210.0
MIN_ZOOM, MAX_SHIFT = 0.85, 15.0
SS = 1  # supersampling, for smooth nuclear outlines
DENSITY = 1 / 100  # optical density per unit of painted stain value (values are 0-255)

T = TypeVar("T")


@dataclass
class _Batch:
    """Primitives of one kind painted on one layer, in order.

    kind: "circle" (shapes: N×2 centres, size: radii), "poly" (shapes: N×k×2 outlines) or "line"
    (shapes: all points of the N polylines, one after another, split by `offsets`; size: widths).
    layer: "E", "H", "R", or "clear" (glass: eosin set to the value, the other stains removed).
    """

    kind: str
    layer: str
    shapes: np.ndarray
    size: np.ndarray
    value: np.ndarray
    offsets: np.ndarray | None = None

    def mergeable(self, other: _Batch) -> bool:
        return (self.kind == other.kind and self.layer == other.layer
                and (self.kind != "poly" or self.shapes.shape[1] == other.shapes.shape[1]))

    def merged(self, other: _Batch) -> _Batch:
        offsets = None
        if self.kind == "line":
            offsets = np.r_[self.offsets, other.offsets[1:] + self.offsets[-1]]
        return _Batch(self.kind, self.layer, np.concatenate([self.shapes, other.shapes]),
                      np.concatenate([self.size, other.size]), np.concatenate([self.value, other.value]), offsets)


def _column(value: np.ndarray | float, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, np.float32), (n,)).copy()


class Scene:
    """A specimen's tissue as an ordered list of primitive batches (later ones paint over)."""

    def __init__(self) -> None:
        self.batches: list[_Batch] = []

    def _add(self, batch: _Batch) -> None:
        # Consecutive batches of the same kind and layer are painted as one: rendering cost is
        # per batch as well as per primitive.
        if self.batches and self.batches[-1].mergeable(batch):
            self.batches[-1] = self.batches[-1].merged(batch)
        else:
            self.batches.append(batch)

    def circles(self, layer: str, xy: np.ndarray, r: np.ndarray | float, value: np.ndarray | float) -> None:
        xy = np.asarray(xy, dtype=np.float32).reshape(-1, 2)
        if len(xy):
            self._add(_Batch("circle", layer, xy, _column(r, len(xy)), _column(value, len(xy))))

    def polygons(self, layer: str, outlines: np.ndarray, value: np.ndarray | float) -> None:
        outlines = np.asarray(outlines, dtype=np.float32)
        if len(outlines):
            n = len(outlines)
            self._add(_Batch("poly", layer, outlines, np.zeros(n, np.float32), _column(value, n)))

    def ellipses(self, layer: str, xy: np.ndarray, a: np.ndarray | float, b: np.ndarray | float,
                 angle: np.ndarray | float, value: np.ndarray | float, k: int = 8) -> None:
        xy = np.asarray(xy, dtype=np.float32).reshape(-1, 2)
        if len(xy):
            self.polygons(layer, ellipse_outlines(xy, a, b, angle, k), value)

    def lines(self, layer: str, paths: list[np.ndarray], width: np.ndarray | float,
              value: np.ndarray | float) -> None:
        n = len(paths)
        if n:
            offsets = np.cumsum([0] + [len(p) for p in paths])
            points = np.concatenate(paths).astype(np.float32)
            self._add(_Batch("line", layer, points, _column(width, n), _column(value, n), offsets))

    def _interleave(self, parts: list[Scene]) -> None:
        """Add separately painted structures (glands, nests) step by step across all of them, so
        that each step is one batch; valid because the structures do not overlap."""
        for step in range(max((len(part.batches) for part in parts), default=0)):
            for part in parts:
                if step < len(part.batches):
                    self._add(part.batches[step])

    def paint_apart(self, centres: Iterable[np.ndarray], paint: Callable[[Scene, np.ndarray], T]) -> list[T]:
        """Paint one structure per centre (a gland, a nest, a vessel) on a scene of its own, then
        add them all with `_interleave`; returns what `paint` returned for each centre."""
        parts, results = [], []
        for centre in centres:
            part = Scene()
            results.append(paint(part, centre))
            parts.append(part)
        self._interleave(parts)
        return results


def ellipse_outlines(xy: np.ndarray, a: np.ndarray | float, b: np.ndarray | float,
                     angle: np.ndarray | float, k: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False, dtype=np.float32)
    n = len(xy)
    a, b, angle = (np.broadcast_to(np.asarray(v, np.float32), (n,))[:, None] for v in (a, b, angle))
    ex, ey = a * np.cos(t), b * np.sin(t)
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([xy[:, :1] + ex * ca - ey * sa, xy[:, 1:] + ex * sa + ey * ca], axis=2)


_STAIN_LAYERS = ("E", "H", "R")


def render_densities(sc: Scene, base_eosin: float, matrix: np.ndarray, offset: np.ndarray) -> dict[str, np.ndarray]:
    """Paint the scene seen through `matrix` (rotation × zoom) and `offset` into stain densities."""
    size = IMAGE_SIZE * SS
    images = {name: Image.new("L", (size, size), 0) for name in _STAIN_LAYERS}
    images["E"].paste(int(base_eosin), (0, 0, size, size))
    draws = {name: ImageDraw.Draw(img) for name, img in images.items()}
    zoom = float(np.sqrt(abs(np.linalg.det(matrix))))
    m = (matrix * SS).astype(np.float32)
    t = (offset * SS).astype(np.float32)
    for batch in sc.batches:
        if batch.layer == "clear":
            targets = [(draws["E"], 1.0), (draws["H"], 0.0), (draws["R"], 0.0)]
        else:
            targets = [(draws[batch.layer], 1.0)]
        pts = batch.shapes @ m.T + t
        if batch.kind == "circle":
            r = batch.size * (zoom * SS)
            keep = np.all((pts > -r[:, None]) & (pts < size + r[:, None]), axis=1)
            boxes = np.concatenate([pts[keep] - r[keep, None], pts[keep] + r[keep, None]], 1).tolist()
            for draw, scale in targets:
                for box, v in zip(boxes, (batch.value[keep] * scale).astype(int).tolist()):
                    draw.ellipse(box, fill=v)
        elif batch.kind == "poly":
            keep = np.all((pts.max(1) > 0) & (pts.min(1) < size), axis=1)
            outlines = pts[keep].reshape(int(keep.sum()), pts.shape[1] * 2).tolist()
            for draw, scale in targets:
                for outline, v in zip(outlines, (batch.value[keep] * scale).astype(int).tolist()):
                    draw.polygon(outline, fill=v)
        else:
            starts = batch.offsets[:-1]
            keep = np.all((np.maximum.reduceat(pts, starts) > 0) & (np.minimum.reduceat(pts, starts) < size), axis=1)
            widths = np.maximum(1, np.round(batch.size * zoom * SS)).astype(int).tolist()
            flat = pts.ravel().tolist()
            for i in np.flatnonzero(keep).tolist():
                path = flat[2 * batch.offsets[i]:2 * batch.offsets[i + 1]]
                for draw, scale in targets:
                    draw.line(path, fill=int(batch.value[i] * scale), width=widths[i], joint="curve")
    return {name: np.asarray(img.reduce(SS), dtype=np.float32) for name, img in images.items()}


def stain_colour(densities: dict[str, np.ndarray], p: dict, gain: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Beer-Lambert colour: transmitted light falls exponentially with the summed optical density."""
    chromatin = 1 + 0.25 * rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    amounts = np.stack([densities["E"], densities["H"] * chromatin, densities["R"]], axis=2)
    vectors = np.array([p["stain_vectors"][name] for name in _STAIN_LAYERS], np.float32)
    od = amounts @ (vectors * (gain * DENSITY)[:, None]).astype(np.float32) + np.asarray(p["glass_od"], np.float32)
    return Image.fromarray((255 * np.exp(-od)).astype(np.uint8), "RGB")
