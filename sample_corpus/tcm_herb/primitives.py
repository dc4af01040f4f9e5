"""Drawing primitives of the herb photographs: pieces are lists of polygons, lines and dots in a local
frame (x along the piece, y across it), with the outlines and surface marks all forms share."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

RGB = tuple[int, int, int]


@dataclass
class Prim:
    kind: str  # "poly", "line" or "dots"
    pts: np.ndarray  # (n, 2) local coordinates
    colour: RGB
    width: float = 1.0  # line width, or dot radius
    outline: RGB | None = None
    body: bool = False  # casts a shadow


def shaded(colour: Any, factor: float) -> RGB:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)  # type: ignore[return-value]


def mix(a: Any, b: Any, t: float) -> RGB:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


WHITE: RGB = (250, 248, 240)


def _luma(colour: Any) -> float:
    return 0.3 * colour[0] + 0.59 * colour[1] + 0.11 * colour[2]


@lru_cache(maxsize=None)
def _circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Angles and unit-circle points of an n-gon; drawing builds thousands of outlines per image."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return t, np.stack([np.cos(t), np.sin(t)], axis=1)


@lru_cache(maxsize=None)
def _arc_steps(n: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.linspace(0, 1, n)
    return s[:, None], np.sin(np.pi * s)[:, None]


def ellipse(length: float, width: float, prng: np.random.Generator, irregular: float, n: int = 22,
            scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """An ellipse whose radius wobbles by low harmonics: the outline of a natural piece."""
    t, unit = _circle(n)
    phases = prng.uniform(0, 2 * np.pi, 3)
    wobble = 1 + irregular * 1.5 * (np.cos(2 * t + phases[0]) / 2 + np.cos(3 * t + phases[1]) / 3
                                    + np.cos(5 * t + phases[2]) / 5)
    radii = np.array([0.5 * length * scale, 0.5 * width * scale])
    return unit * radii * wobble[:, None] + np.asarray(offset)


def inside_points(length: float, width: float, count: int, prng: np.random.Generator,
                  fill: float = 0.8) -> np.ndarray:
    """Uniform points inside the central ellipse of a piece (for dots, pores, specks)."""
    r = np.sqrt(prng.uniform(0, 1, count)) * fill
    t = prng.uniform(0, 2 * np.pi, count)
    return np.stack([0.5 * length * r * np.cos(t), 0.5 * width * r * np.sin(t)], axis=1)


def curve(p0: tuple[float, float], p1: tuple[float, float], bend: float, n: int = 5) -> np.ndarray:
    """A gently bent segment from p0 to p1 (bend in units of its length)."""
    s, lift = _arc_steps(n)
    a = np.asarray(p0, dtype=float)
    d = np.asarray(p1, dtype=float) - a
    return a + s * d + (bend * lift) * np.array([-d[1], d[0]])


def _mark_count(base: float, length: float, width: float, prng: np.random.Generator) -> int:
    """How many marks a texture puts on a piece: proportional to its area, at least one."""
    return max(1, int(base * length * width / 400.0 * prng.uniform(0.7, 1.3)))


def texture_marks(texture: str, length: float, width: float, colour: RGB, secondary: RGB,
                  prng: np.random.Generator) -> list[Prim]:
    """Surface marks shared by all forms; forms add their own structure (rings, veins, nodes)."""
    if length < 9:  # a seed a few pixels long shows no surface detail
        return []
    prims: list[Prim] = []
    if texture in ("glossy", "waxy"):
        bright = 0.55 if texture == "glossy" else 0.3
        prims.append(Prim("poly", ellipse(length * 0.35, width * 0.22, prng, 0.05, 12,
                                          offset=(-0.12 * length, -0.18 * width)), mix(colour, WHITE, bright)))
    elif texture == "wrinkled":
        for _ in range(_mark_count(3, length, width, prng) + 2):
            x0, y0 = inside_points(length, width, 1, prng, 0.7)[0]
            dx = prng.uniform(0.15, 0.35) * length
            prims.append(Prim("line", curve((x0 - dx / 2, y0), (x0 + dx / 2, y0 + prng.normal(0, 0.08) * width),
                                            prng.uniform(-0.3, 0.3)), shaded(colour, 0.62)))
    elif texture in ("fibrous", "ridged"):
        lines = int(prng.integers(3, 7)) if texture == "ridged" else int(prng.integers(5, 10))
        for y in np.linspace(-0.35, 0.35, lines) * width:
            span = 0.5 * length * np.sqrt(max(0.0, 1 - (2 * y / width) ** 2)) * 0.85
            prims.append(Prim("line", curve((-span, y), (span, y + prng.normal(0, 0.03) * width),
                                            prng.uniform(-0.04, 0.04)),
                              shaded(colour, 0.72 if texture == "ridged" else 0.85)))
    elif texture in ("powdery", "crystalline"):
        n = _mark_count(10 if texture == "powdery" else 3, length, width, prng)
        tone = mix(colour, WHITE, 0.6) if texture == "powdery" else (255, 255, 250)
        prims.append(Prim("dots", inside_points(length, width, n, prng, 0.85), tone, 0.6))
    elif texture in ("granular", "spiny"):
        n = _mark_count(8 if texture == "granular" else 16, length, width, prng)
        prims.append(Prim("dots", inside_points(length, width, n, prng, 0.85), shaded(colour, 0.65), 0.8))
        if texture == "spiny":
            prims.append(Prim("dots", inside_points(length, width, n // 2, prng, 0.85),
                              mix(colour, WHITE, 0.3), 0.6))
    elif texture == "oily":  # oil glands and cavities show darker than the tissue around them
        n = _mark_count(2.5, length, width, prng) + 2
        oil = secondary if _luma(secondary) < _luma(colour) else shaded(colour, 0.6)
        prims.append(Prim("dots", inside_points(length, width, n, prng, 0.75), oil, max(0.7, length / 60)))
    elif texture == "porous":
        n = _mark_count(2.5, length, width, prng) + 3
        prims.append(Prim("dots", inside_points(length, width, n, prng, 0.75), shaded(colour, 0.72),
                          max(0.7, length / 45)))
    elif texture == "rough":
        for _ in range(_mark_count(2, length, width, prng) + 1):
            x, y = inside_points(length, width, 1, prng, 0.7)[0]
            prims.append(Prim("poly", ellipse(length * 0.18, width * 0.25, prng, 0.3, 8, offset=(x, y)),
                              mix(colour, secondary, 0.6)))
    elif texture == "marbled":
        for _ in range(int(prng.integers(4, 8))):
            y0 = prng.uniform(-0.35, 0.35) * width
            xs = np.linspace(-0.4, 0.4, 7) * length
            ys = y0 + np.sin(xs / length * prng.uniform(6, 12) + prng.uniform(0, 6)) * 0.08 * width
            prims.append(Prim("line", np.stack([xs, ys], axis=1), secondary, max(1.0, width / 25)))
    elif texture == "hairy":
        t = prng.uniform(0, 2 * np.pi, _mark_count(6, length, width, prng) + 4)
        base = np.stack([0.5 * length * np.cos(t), 0.5 * width * np.sin(t)], axis=1)
        reach = 0.05 * min(length, width)
        for (x, y), a in zip(base, t):
            tip = (x + np.cos(a) * reach, y + np.sin(a) * reach)
            prims.append(Prim("line", np.array([[x, y], tip]), mix(colour, WHITE, 0.35)))
    return prims


def rounded(body: np.ndarray, colour: RGB, length: float, width: float) -> list[Prim]:
    """A solid piece: a dark rim around its lit body, offset to one side so it reads as rounded."""
    rim = shaded(colour, 0.62)
    lit = body * 0.86 + np.array([-0.04 * length, -0.06 * width])
    return [Prim("poly", body, rim, outline=shaded(colour, 0.45), body=True), Prim("poly", lit, colour)]
