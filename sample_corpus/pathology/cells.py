"""Cells and small structures a histology scene is built from, and the geometry that places them.

Every painter draws from the specimen's layout rng, so the order of calls is part of the specimen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sample_corpus.pathology.scene import EXTENT, Scene


def blob(rng: np.random.Generator, centre: Sequence[float], radius: float, irregularity: float,
         k: int = 28) -> np.ndarray:
    """A closed outline whose radius wobbles with a few low harmonics (glands, nests, nodules)."""
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    r = np.ones(k)
    for harmonic in range(2, 6):
        r += irregularity / harmonic * rng.normal() * np.cos(harmonic * t + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.45, 1.8)
    return np.stack([centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)], axis=1)


def jittered_grid(rng: np.random.Generator, spacing: float, jitter: float, keep: float = 1.0,
                  centre: Sequence[float] = (0.0, 0.0), half: float = EXTENT) -> np.ndarray:
    """Points on a jittered hexagonal grid over a square (by default the whole tissue): densely
    packed cells; `keep` is the fraction of grid places that hold a cell."""
    rows = np.arange(-half, half + spacing, spacing * 0.866)
    cols = np.arange(-half, half + spacing, spacing)
    gx, gy = np.meshgrid(cols, rows)
    gx = gx + (np.arange(len(rows))[:, None] % 2) * spacing / 2
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1) + rng.normal(0, jitter, (gx.size, 2)) + np.asarray(centre)
    return pts[rng.random(len(pts)) < keep]


def uniform_points(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-EXTENT, EXTENT, (n, 2))


def inside(pts: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """Which points lie inside a closed outline (even-odd ray casting, vectorised)."""
    x, y = pts[:, 0:1], pts[:, 1:2]
    x0, y0 = outline[:, 0], outline[:, 1]
    x1, y1 = np.r_[x0[1:], x0[:1]], np.r_[y0[1:], y0[:1]]
    crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / (y1 - y0 + 1e-9) + x0)
    return crosses.sum(axis=1) % 2 == 1


def inside_any(pts: np.ndarray, outlines: Sequence[np.ndarray]) -> np.ndarray:
    mask = np.zeros(len(pts), bool)
    for outline in outlines:
        lo, hi = outline.min(0), outline.max(0)
        near = np.flatnonzero(np.all((pts >= lo) & (pts <= hi), axis=1))  # bounding-box test first
        mask[near] |= inside(pts[near], outline)
    return mask


def stroma_points(rng: np.random.Generator, n: int, outlines: Sequence[np.ndarray]) -> np.ndarray:
    """Of `n` points spread over the tissue, those outside every outline (glands, nests)."""
    points = uniform_points(rng, n)
    return points[~inside_any(points, outlines)]


def paint_fibres(sc: Scene, rng: np.random.Generator, n: int, value: tuple[float, float],
                 width: tuple[float, float], orientation: float, spread: float, length: float) -> None:
    """Wavy collagen fibres, mostly along `orientation` (radians)."""
    steps = 8
    heading = orientation + rng.normal(0, spread, (n, 1)) + np.cumsum(rng.normal(0, 0.18, (n, steps)), 1)
    step = length * rng.uniform(0.5, 1.5, (n, 1)) / steps
    start = uniform_points(rng, n)[:, None, :]
    path = np.cumsum(step[..., None] * np.stack([np.cos(heading), np.sin(heading)], 2), 1)
    sc.lines("E", list(np.concatenate([start, start + path], 1)), rng.uniform(*width, n), rng.uniform(*value, n))


def paint_nuclei(sc: Scene, rng: np.random.Generator, xy: np.ndarray, a: tuple[float, float],
                 b: tuple[float, float], value: tuple[float, float], angle: np.ndarray | None = None,
                 nucleoli: float = 0.0) -> None:
    """Nuclei as ellipses; `nucleoli` is the fraction given a dark dot (prominent nucleoli)."""
    n = len(xy)
    if not n:
        return
    angles = rng.uniform(0, np.pi, n) if angle is None else angle
    sc.ellipses("H", xy, rng.uniform(*a, n), rng.uniform(*b, n), angles, rng.uniform(*value, n))
    if nucleoli:
        pick = rng.random(n) < nucleoli
        sc.circles("H", xy[pick] + rng.normal(0, 0.6, (pick.sum(), 2)), 0.9, 250)


def paint_lymphocytes(sc: Scene, rng: np.random.Generator, xy: np.ndarray, dark: float = 1.0) -> None:
    sc.circles("H", xy, rng.uniform(2.4, 3.1, len(xy)), rng.uniform(150, 190, len(xy)) * dark)


def paint_fibroblasts(sc: Scene, rng: np.random.Generator, xy: np.ndarray) -> None:
    """Thin, dark spindle nuclei of the stroma between glands or nests."""
    paint_nuclei(sc, rng, xy, (5, 7), (1.0, 1.5), (130, 170))


def paint_neutrophils(sc: Scene, rng: np.random.Generator, xy: np.ndarray) -> None:
    """Neutrophils: pale cytoplasm around three or four small nuclear lobes."""
    n = len(xy)
    sc.circles("E", xy, rng.uniform(3.8, 4.6, n), rng.uniform(45, 60, n))
    lobes = []
    angle = rng.uniform(0, 2 * np.pi, n)
    for i in range(4):
        if i:
            angle = angle + rng.uniform(1.2, 2.0, n)
        keep = rng.random(n) < (0.6 if i == 3 else 1.0)
        lobes.append(xy[keep] + 1.9 * np.stack([np.cos(angle[keep]), np.sin(angle[keep])], 1))
    pts = np.concatenate(lobes)
    sc.circles("H", pts, rng.uniform(1.1, 1.5, len(pts)), rng.uniform(170, 215, len(pts)))


def paint_red_cells(sc: Scene, rng: np.random.Generator, outline: np.ndarray, fill: float) -> None:
    centre = outline.mean(0)
    radius = np.abs(outline - centre).max()
    pts = centre + rng.uniform(-radius, radius, (int(fill * radius**2 / 6), 2))
    pts = pts[inside(pts, outline)]
    sc.circles("R", pts, rng.uniform(2.6, 3.2, len(pts)), rng.uniform(90, 130, len(pts)))


def paint_vessel(sc: Scene, rng: np.random.Generator, centre: Sequence[float], radius: float,
                 congested: float) -> None:
    """A small vessel: clear lumen (with red cells when congested) lined by flat endothelial nuclei."""
    outline = blob(rng, centre, radius, 0.25, 20)
    sc.polygons("clear", outline[None], 6)
    if congested:
        paint_red_cells(sc, rng, outline, congested)
    idx = rng.choice(len(outline), size=max(3, len(outline) // 4), replace=False)
    tangent = np.arctan2(np.roll(outline, -1, 0)[:, 1] - outline[:, 1], np.roll(outline, -1, 0)[:, 0] - outline[:, 0])
    paint_nuclei(sc, rng, outline[idx], (3.0, 4.0), (1.0, 1.4), (140, 180), angle=tangent[idx])
