"""The pieces of crude drug, one painter per form (berry, root slice, bark, flower, ...).

Each painter builds one piece from its length L and width W (pixels at the reference zoom), main
and secondary colours c and s, surface texture, curl and outline irregularity, drawing from the
piece's own rng so that a batch's pieces look the same in every photograph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sample_corpus.tcm_herb.monographs import FORMS
from sample_corpus.tcm_herb.primitives import (RGB, WHITE, Prim, curve, ellipse, inside_points, mix, rounded, shaded,
                                               texture_marks)


def _piece_berry(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                 prng: np.random.Generator) -> list[Prim]:
    prims = rounded(ellipse(L, W, prng, irr + 0.05), c, L, W)
    prims += texture_marks(tex, L, W, c, s, prng)
    prims.append(_gloss(L, W, c, prng, (0.18, 0.12), 0.5))
    prims.append(_stalk_scar(L, W, s, 0.46, 0.1))
    return prims


def _piece_fruit(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                 prng: np.random.Generator) -> list[Prim]:
    body = ellipse(L, W, prng, irr + 0.05 + 0.3 * curl + (0.06 if tex == "spiny" else 0.0),
                   n=34 if tex in ("spiny", "wrinkled") else 24)
    if tex == "sectioned":  # a slice or half: skin rim around the cut flesh, seeds and segments
        prims = [Prim("poly", body, c, outline=shaded(c, 0.5), body=True),
                 Prim("poly", body * 0.8, s, outline=shaded(s, 0.8))]
        for a in prng.uniform(0, 2 * np.pi, int(prng.integers(4, 8))):
            prims.append(Prim("line", np.array([[0, 0], [np.cos(a) * 0.3 * L, np.sin(a) * 0.3 * W]]),
                              shaded(s, 0.7)))
        seeds = inside_points(L, W, int(prng.integers(2, 5)), prng, 0.45)
        prims.append(Prim("dots", seeds, shaded(s, 0.85), max(1.0, L / 14)))
        prims.append(Prim("dots", np.array([[0.0, 0.0]]), shaded(c, 0.7), max(1.0, L / 16)))
        return prims
    prims = rounded(body, c, L, W)
    if tex == "ridged":
        for y in np.linspace(-0.3, 0.3, 4) * W:
            prims.append(Prim("line", curve((-0.42 * L, y * 0.4), (0.42 * L, y * 0.4), y / W * 0.5), shaded(c, 0.65)))
    prims += texture_marks(tex, L, W, c, s, prng)
    if L >= 9:
        prims.append(_gloss(L, W, c, prng, (0.16, 0.1), 0.35))
    prims.append(_stalk_scar(L, W, s, 0.47, 0.08))
    return prims


def _gloss(L: float, W: float, c: RGB, prng: np.random.Generator, size: tuple[float, float],
           strength: float) -> Prim:
    """The light's reflection on a smooth round fruit: a pale spot up and to the left of its centre."""
    return Prim("poly", ellipse(L * size[0], W * size[1], prng, 0.05, 10, offset=(-0.15 * L, -0.2 * W)),
                mix(c, WHITE, strength))


def _stalk_scar(L: float, W: float, s: RGB, at: float, radius: float) -> Prim:
    """Where the stalk was attached: a dot `at` × L from the centre, of radius `radius` × W."""
    return Prim("dots", np.array([[at * L, 0.0]]), s, max(0.7, W * radius))


def _piece_seed(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[Prim]:
    body = ellipse(L, W, prng, irr * 0.5 + 0.03, n=16 if L < 9 else 22)
    if tex == "marbled":  # a flat slice of the seed: no rounded shading
        return [Prim("poly", body, c, outline=shaded(s, 0.8), body=True)] + texture_marks(tex, L, W, c, s, prng)
    prims = rounded(body, c, L, W)
    if L >= 9:
        prims.append(Prim("line", curve((-0.35 * L, 0.08 * W), (0.35 * L, 0.08 * W), 0.02), s, max(1.0, W * 0.12)))
    prims += texture_marks(tex, L, W, c, s, prng)
    return prims


def _piece_kernel(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                  prng: np.random.Generator) -> list[Prim]:
    t = np.linspace(0, 2 * np.pi, 26, endpoint=False)
    taper = np.sqrt((1 - np.cos(t)) / 2) ** 0.6  # width shrinks to a point at +x
    body = np.stack([0.5 * L * np.cos(t), 0.5 * W * np.sin(t) * taper * 1.25], axis=1)
    body *= 1 + irr * 0.3 * np.cos(3 * t + prng.uniform(0, 6))[:, None]
    prims = rounded(body, c, L, W)
    for k in np.linspace(-0.5, 0.5, 5):  # veins fanning from the rounded base
        prims.append(Prim("line", curve((-0.42 * L, 0.0), (0.3 * L, k * 0.6 * W), k * 0.2), shaded(s, 0.95)))
    return prims + texture_marks(tex, L, W, c, s, prng)


def _piece_root_slice(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                      prng: np.random.Generator) -> list[Prim]:
    """A transverse slice: bark ring, cut face, cambium ring, radial rays and a centre."""
    outer = ellipse(L, W, prng, irr + 0.04, n=28)
    bark = 0.82 + prng.uniform(0, 0.08)
    prims = [Prim("poly", outer, s, outline=shaded(s, 0.6), body=True), Prim("poly", outer * bark, c)]
    ring = prng.uniform(0.45, 0.65)
    prims.append(Prim("line", np.vstack([outer * ring, outer[:1] * ring]), mix(c, s, 0.7), max(1.0, L / 45)))
    rays = int(prng.integers(16, 26)) if tex == "fibrous" else int(prng.integers(5, 9))
    ray_colour = shaded(mix(c, s, 0.5), 0.8 if tex == "fibrous" else 0.92)
    for a in np.linspace(0, 2 * np.pi, rays, endpoint=False) + prng.uniform(0, 1):
        direction = np.array([np.cos(a) * 0.5 * L, np.sin(a) * 0.5 * W])
        prims.append(Prim("line", np.array([direction * 0.08, direction * bark * 0.95]), ray_colour))
    prims.append(Prim("dots", np.array([[0.0, 0.0]]), mix(c, s, 0.6), max(0.8, L / 30)))
    return prims + texture_marks(tex, L * bark, W * bark, c, s, prng)


def _piece_twig(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[Prim]:
    if L / W < 2:  # a thick transverse slice: bark, wood and a squarish pith
        outer = ellipse(L, W, prng, irr * 0.5 + 0.03)
        prims = [Prim("poly", outer, c, outline=shaded(c, 0.6), body=True), Prim("poly", outer * 0.78, s)]
        pith = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.09 * np.array([L, W])
        prims.append(Prim("poly", pith, mix(s, c, 0.6)))
        for a in np.linspace(0, 2 * np.pi, 10, endpoint=False):
            prims.append(Prim("line", np.array([[np.cos(a) * 0.1 * L, np.sin(a) * 0.1 * W],
                                                [np.cos(a) * 0.36 * L, np.sin(a) * 0.36 * W]]), shaded(s, 0.88)))
        return prims
    axis = curve((-L / 2, 0.0), (L / 2, prng.normal(0, 0.04) * L), prng.uniform(-0.06, 0.06), n=6)
    prims = [Prim("line", axis, c, W, body=True)]
    if W >= 4:
        prims.append(Prim("line", axis + np.array([0, -0.22 * W]), mix(c, WHITE, 0.25), max(1.0, W * 0.2)))
    if tex == "ridged" and W >= 3:
        prims.append(Prim("line", axis + np.array([0, 0.15 * W]), shaded(c, 0.7)))
    for x in np.arange(-L / 2 + prng.uniform(0.1, 0.3) * L, L / 2, prng.uniform(0.25, 0.4) * L):
        y = np.interp(x, axis[:, 0], axis[:, 1])
        prims.append(Prim("line", np.array([[x, y - 0.6 * W], [x, y + 0.6 * W]]), s, max(1.0, W * 0.3)))
    prims.append(Prim("dots", axis[[0, -1]], mix(s, WHITE, 0.2), max(0.6, W * 0.3)))
    if tex == "hairy":  # slender flower spikes on some segments
        if prng.random() < 0.5:
            spike = ellipse(L * 0.45, W * 1.8, prng, 0.1, 14, offset=(0.3 * L, axis[-1, 1]))
            prims.append(Prim("poly", spike, mix(c, s, 0.4), outline=shaded(c, 0.6), body=True))
        prims += texture_marks("hairy", L, W * 1.4, c, s, prng)
    return prims


def _piece_root(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[Prim]:
    if L / W > 10:  # tangled fine rootlets from a small knotty rhizome
        prims = [Prim("poly", ellipse(L * 0.2, L * 0.1, prng, 0.2, 12), shaded(c, 0.8), body=True)]
        for _ in range(int(prng.integers(4, 9))):
            a = prng.uniform(-1.2, 1.2)
            end = (np.cos(a) * L * prng.uniform(0.5, 0.9), np.sin(a) * L * 0.5)
            prims.append(Prim("line", curve((0.0, 0.0), end, prng.uniform(-0.3, 0.3), n=7),
                              mix(c, s, prng.uniform(0, 0.6)), max(1.0, W), body=True))
        return prims
    t = np.linspace(-0.5, 0.5, 14)
    spindle = L / W < 4  # tuberous roots taper at both ends; root segments are cut square
    profile = np.sqrt(np.clip(1 - (2 * t) ** 2, 0.02, 1)) if spindle else np.ones_like(t) - 0.1 * np.abs(t)
    profile = profile * (1 + irr * 0.5 * np.sin(t * prng.uniform(6, 14) + prng.uniform(0, 6)))
    bend = prng.uniform(-0.08, 0.08) * L * np.cos(np.pi * t)
    upper = np.stack([t * L, bend - profile * W / 2], axis=1)
    lower = np.stack([t * L, bend + profile * W / 2], axis=1)[::-1]
    body = np.vstack([upper, lower])
    prims = rounded(body, c, L, W)
    if tex == "rough":  # knobby, tumour-like bumps on the surface
        for x in prng.uniform(-0.35, 0.35, int(prng.integers(3, 6))) * L:
            y = np.interp(x, t * L, bend) + prng.choice([-1, 1]) * 0.32 * W
            bump = ellipse(W * 0.35, W * 0.3, prng, 0.1, 10, offset=(x, y))
            prims += [Prim("poly", bump, shaded(c, 0.75), outline=shaded(c, 0.5), body=True),
                      Prim("poly", bump * 0.7 + 0.3 * np.array([x, y]) - [0.02 * L, 0.03 * W], c)]
    if not spindle:
        for end in (0, -1):
            cut = ellipse(W * 0.3, W * 0.9, prng, 0.05, 10, offset=(t[end] * L * 0.96, bend[end]))
            prims.append(Prim("poly", cut, s))
    if tex == "wrinkled":  # transverse wrinkles across the root
        for x in np.sort(prng.uniform(-0.4, 0.4, int(prng.integers(4, 9)))) * L:
            y = np.interp(x, t * L, bend)
            prims.append(Prim("line", curve((x, y - 0.4 * W), (x + prng.normal(0, 0.03) * L, y + 0.4 * W), 0.1),
                              shaded(c, 0.6)))
        return prims
    return prims + texture_marks(tex, L, W, c, s, prng)


def _piece_rhizome(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                   prng: np.random.Generator) -> list[Prim]:
    """Knobby: a chain of overlapping lobes along a bent axis, with ring nodes."""
    lobes = 1 if L / W < 1.4 else int(np.clip(round(L / W * prng.uniform(0.9, 1.4)), 2, 6))
    xs = np.linspace(-0.5, 0.5, lobes + 2)[1:-1] * L if lobes > 1 else np.zeros(1)
    ys = prng.normal(0, 0.18, lobes) * W
    sizes = [(L / lobes * prng.uniform(1.3, 1.8) if lobes > 1 else L, W * prng.uniform(0.75, 1.1)) for _ in xs]
    shapes = [ellipse(a, b, prng, irr + 0.08, 16, offset=(x, y)) for (a, b), x, y in zip(sizes, xs, ys)]
    prims = [Prim("poly", sh, shaded(c, 0.62), outline=shaded(c, 0.45), body=True) for sh in shapes]
    prims += [Prim("poly", sh * 0.88 + np.array([-0.03 * L, -0.05 * W]) + 0.12 * np.array([x, y]), c)
              for sh, x, y in zip(shapes, xs, ys)]
    if tex in ("ridged", "hairy") or lobes > 1:
        for (a, b), x, y in zip(sizes, xs, ys):
            for dx in np.linspace(-0.3, 0.3, 3 if tex in ("ridged", "hairy") else 1) * a:
                prims.append(Prim("line", curve((x + dx, y - 0.4 * b), (x + dx, y + 0.4 * b), 0.15), s))
    if prng.random() < 0.35:  # a broken or cut end shows the inside
        cut = ellipse(W * 0.35, W * 0.6, prng, 0.1, 12, offset=(xs[-1] + sizes[-1][0] * 0.3, ys[-1]))
        prims.append(Prim("poly", cut, s))
    return prims + texture_marks(tex, L * 0.9, W * 0.9, c, s, prng)


def _piece_bark(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[Prim]:
    t = np.linspace(-0.5, 0.5, 10)
    top = np.stack([t * L, -W / 2 + prng.normal(0, 0.05, t.size) * W], axis=1)
    bottom = np.stack([t[::-1] * L, W / 2 + prng.normal(0, 0.05, t.size) * W], axis=1)
    body = np.vstack([top, bottom])
    body[:, 0] += np.where(np.abs(body[:, 0]) > 0.45 * L, prng.normal(0, 0.03 * L, len(body)), 0)  # broken ends
    if curl >= 0.5:  # a quill: rolled edges catch light, the hollow between them is dark
        prims = [Prim("poly", body, s, outline=shaded(s, 0.55), body=True)]
        prims.append(Prim("poly", body * np.array([0.98, 0.62]), shaded(c, 0.6)))
        prims.append(Prim("line", np.stack([t * L * 0.95, np.full_like(t, -0.34 * W)], axis=1), mix(c, WHITE, 0.15),
                          max(1.0, W * 0.12)))
        prims.append(Prim("line", np.stack([t * L * 0.95, np.full_like(t, 0.02 * W)], axis=1), shaded(c, 0.4),
                          max(1.0, W * 0.14)))
        prims.append(Prim("line", np.stack([t * L * 0.95, np.full_like(t, 0.3 * W)], axis=1), c, max(1.0, W * 0.14)))
    else:
        prims = [Prim("poly", body, c, outline=shaded(s, 0.8), body=True)]
        prims.append(Prim("line", top * np.array([1.0, 0.92]), s, max(1.0, W * 0.1)))
    if tex == "rubbery":  # silvery rubber threads across a break
        for k in range(int(prng.integers(3, 7))):
            y = (k / 6 - 0.4) * W
            thread = curve((0.42 * L, y), (0.56 * L, y + prng.normal(0, 0.1) * W), 0.2)
            prims.append(Prim("line", thread, (236, 236, 230)))
        return prims
    return prims + texture_marks(tex, L, W * 0.8, c, s, prng)


def _piece_peel(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[Prim]:
    body = ellipse(L, W, prng, irr + 0.3, n=30)
    body[:, 1] += 0.15 * W * np.sin(body[:, 0] / L * 6 + prng.uniform(0, 6))  # twisted, torn pieces
    prims = [Prim("poly", body, c, outline=shaded(c, 0.55), body=True)]
    half = body[body[:, 1] > np.median(body[:, 1])]
    if len(half) >= 3 and prng.random() < 0.4 + 0.5 * curl:  # the curled edge shows the pale inner side
        inner = np.vstack([half, half[::-1] * np.array([0.95, 0.6])])
        prims.append(Prim("poly", inner, s, outline=shaded(s, 0.75)))
    return prims + texture_marks(tex, L, W * 0.7, c, s, prng)


def _piece_leaf(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[Prim]:
    if tex == "woolly":  # a soft tuft: many fine curly hairs around a small core
        prims = [Prim("poly", ellipse(L * 0.5, W * 0.5, prng, 0.2, 14), shaded(c, 0.9), body=True)]
        for a in prng.uniform(0, 2 * np.pi, 26):
            r = prng.uniform(0.25, 0.55) * L
            prims.append(Prim("line", curve((0.0, 0.0), (np.cos(a) * r, np.sin(a) * r), prng.uniform(-0.4, 0.4), n=4),
                              mix(c, WHITE if prng.random() < 0.5 else s, prng.uniform(0.1, 0.5))))
        return prims
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    taper = 1 - 0.45 * np.clip(np.cos(t), 0, 1) ** 3  # narrows towards the tip at +x
    teeth = 1 + (0.07 if tex == "spiny" else 0.04) * (np.arange(t.size) % 2)  # serrated margin
    crumple = 1 + (0.06 + 0.18 * curl) * np.sin(t * 3 + prng.uniform(0, 6)) * prng.uniform(0.5, 1)
    r = taper * teeth * crumple
    body = np.stack([0.5 * L * np.cos(t) * r, 0.5 * W * np.sin(t) * r], axis=1)
    prims = [Prim("poly", body, c, outline=shaded(c, 0.6), body=True)]
    if prng.random() < curl:  # part of the crumpled leaf is turned over and shows its underside
        under = body[body[:, 1] > 0]
        if len(under) >= 3:
            prims.append(Prim("poly", np.vstack([under, [[under[-1, 0], 0.0], [under[0, 0], 0.0]]]), mix(c, s, 0.7)))
    vein = mix(c, s, 0.5)
    prims.append(Prim("line", np.array([[-0.55 * L, 0.0], [0.45 * L, 0.0]]), vein, max(1.0, W / 25)))
    for x in np.linspace(-0.3, 0.3, int(prng.integers(3, 6))) * L:
        for side in (-1, 1):
            prims.append(Prim("line", np.array([[x, 0.0], [x + 0.15 * L, side * 0.32 * W]]), vein))
    if tex not in ("wrinkled", "spiny"):  # crumpling and spiny teeth are already in the outline
        prims += texture_marks(tex, L, W, c, s, prng)
    return prims


def _piece_flower(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                  prng: np.random.Generator) -> list[Prim]:
    if tex == "filamentous":  # a tangle of slender florets
        prims = []
        for _ in range(int(prng.integers(10, 18))):
            a = prng.uniform(0, 2 * np.pi)
            start = prng.normal(0, 0.1, 2) * L
            end = start + np.array([np.cos(a), np.sin(a)]) * L * prng.uniform(0.3, 0.55)
            colour = s if prng.random() < 0.2 else shaded(c, prng.uniform(0.8, 1.1))
            prims.append(Prim("line", curve(tuple(start), tuple(end), prng.uniform(-0.3, 0.3)), colour,
                              max(1.0, W), body=True))
        return prims
    if L / W >= 3:  # a club-shaped bud, thicker at the tip
        t = np.linspace(-0.5, 0.5, 12)
        half = W / 2 * (0.35 + 0.65 * (t + 0.5) ** 1.5)
        bend = prng.uniform(-0.1, 0.1) * L * (t + 0.5) ** 2
        body = np.vstack([np.stack([t * L, bend - half], axis=1), np.stack([t * L, bend + half], axis=1)[::-1]])
        prims = [Prim("poly", body, c, outline=shaded(c, 0.65), body=True)]
        prims.append(Prim("line", np.stack([t[:5] * L, bend[:5]], axis=1), s, max(1.0, W * 0.3)))
        return prims + texture_marks(tex, L, W * 0.6, c, s, prng)
    # a flower head: rays of petals round a disc
    petals = int(prng.integers(16, 26))
    prims = [Prim("poly", ellipse(L, W, prng, irr + 0.1, 20) * 0.6, shaded(c, 0.8), body=True)]
    for k, a in enumerate(np.linspace(0, 2 * np.pi, petals, endpoint=False) + prng.uniform(0, 1)):
        reach = prng.uniform(0.7, 1.0) * 0.5 * L
        centre = np.array([np.cos(a), np.sin(a)]) * reach * 0.55
        petal = ellipse(reach * 0.95, reach * 0.28, prng, 0.05, 10)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        shade = 0.9 if k % 2 else 1.0
        prims.append(Prim("poly", petal @ rot.T + centre, shaded(c, shade), outline=shaded(c, 0.72)))
    prims.append(Prim("poly", ellipse(L * 0.34, W * 0.34, prng, 0.05, 14), s, outline=shaded(s, 0.7)))
    prims.append(Prim("dots", inside_points(L * 0.3, W * 0.3, 8, prng), shaded(s, 0.75), 0.7))
    return prims


def _piece_fungus(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                  prng: np.random.Generator) -> list[Prim]:
    """A cut cube seen from above-front: a lit top face and two shaded side faces."""
    a, b = L / 2, W / 2 * prng.uniform(0.8, 1.1)
    d = 0.3 * L
    top = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]) + prng.normal(0, 0.03 * L, (4, 2))
    side = np.array([top[1], top[1] + [d * 0.4, d], top[2] + [d * 0.4, d], top[2]])
    front = np.array([top[2], top[2] + [d * 0.4, d], top[3] + [d * 0.4, d], top[3]])
    prims = [Prim("poly", np.vstack([top[:2], side[1:3], front[2:3], top[3:]]), shaded(s, 0.8), body=True),
             Prim("poly", side, shaded(s, 0.85), outline=shaded(s, 0.7)),
             Prim("poly", front, shaded(c, 0.82), outline=shaded(s, 0.7)),
             Prim("poly", top, c, outline=shaded(s, 0.85))]
    return prims + texture_marks(tex, L * 0.9, W * 0.9, c, s, prng)


def _piece_mineral(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                   prng: np.random.Generator) -> list[Prim]:
    """An angular lump with facets of different brightness."""
    corners = int(prng.integers(6, 9))
    angles = (np.arange(corners) + prng.uniform(-0.3, 0.3, corners)) * 2 * np.pi / corners
    radii = prng.uniform(0.35, 0.5, angles.size)
    hull = np.stack([np.cos(angles) * radii * L, np.sin(angles) * radii * W], axis=1)
    apex = prng.normal(0, 0.08, 2) * np.array([L, W])
    prims = [Prim("poly", hull, s, outline=shaded(s, 0.7), body=True)]
    for i in range(len(hull)):
        facet = np.array([apex, hull[i], hull[(i + 1) % len(hull)]])
        prims.append(Prim("poly", facet, shaded(c, prng.uniform(0.82, 1.04))))
    if tex == "fibrous":  # parallel silky fibres along the lump
        for y in np.linspace(-0.18, 0.18, 6) * W:  # inside the ellipse every such hull contains
            span = 0.24 * L * np.sqrt(1 - (y / (0.24 * W)) ** 2)
            prims.append(Prim("line", np.array([[-span, y], [span, y]]), shaded(s, 0.95)))
        return prims
    return prims + texture_marks(tex, L, W, c, s, prng)


def _piece_shell(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                 prng: np.random.Generator) -> list[Prim]:
    body = ellipse(L, W, prng, irr + 0.12, n=26)
    if prng.random() < 0.35:  # inner face up: smooth, pale and pearly
        prims = [Prim("poly", body, s, outline=shaded(s, 0.6), body=True)]
        for k, tint in enumerate(((214, 222, 236), (232, 216, 226), (220, 234, 222))):
            prims.append(Prim("line", curve((-0.3 * L, (k - 1) * 0.15 * W), (0.3 * L, (k - 1) * 0.2 * W), 0.2),
                              mix(s, tint, 0.7), max(1.0, W / 12)))
        return prims
    prims = [Prim("poly", body, c, outline=shaded(c, 0.6), body=True)]
    if tex == "layered":  # growth layers as nested scaly outlines
        for k in (0.82, 0.64, 0.46):
            prims.append(Prim("line", np.vstack([body * k, body[:1] * k]) + np.array([0.05 * L, 0.0]) * (1 - k),
                              mix(c, s, 0.8)))
    elif tex == "porous":  # a row of respiratory holes near one edge
        xs = np.linspace(-0.3, 0.3, int(prng.integers(5, 8))) * L
        holes = np.stack([xs, -0.3 * W + 0.25 * W * (xs / L) ** 2], axis=1)
        prims.append(Prim("dots", holes, shaded(c, 0.35), max(1.0, L / 40)))
        prims += texture_marks("rough", L, W, c, s, prng)
    return prims


def _piece_resin(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                 prng: np.random.Generator) -> list[Prim]:
    """A translucent tear: dark rim, lighter glowing core, dusty surface."""
    body = ellipse(L, W, prng, irr + 0.15, n=20)
    prims = [Prim("poly", body, shaded(c, 0.75), outline=shaded(c, 0.55), body=True),
             Prim("poly", body * 0.75, c), Prim("poly", body * 0.4 + np.array([-0.05 * L, -0.05 * W]),
                                                mix(c, WHITE, 0.25))]
    return prims + texture_marks(tex, L, W, c, s, prng)


def _piece_gelatin(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                   prng: np.random.Generator) -> list[Prim]:
    """A glossy block with translucent amber edges and a highlight band."""
    a, b = L / 2, W / 2
    block = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]) + prng.normal(0, 0.015 * L, (4, 2))
    prims = [Prim("poly", block, c, outline=s, body=True),
             Prim("line", np.array([block[0], block[1]]) + [0, 0.12 * W], mix(c, s, 0.6), max(1.0, W * 0.08)),
             Prim("poly", np.array([[-0.3 * a, -0.8 * b], [0.1 * a, -0.8 * b], [-0.1 * a, 0.8 * b],
                                    [-0.45 * a, 0.8 * b]]), mix(c, WHITE, 0.22))]
    return prims


def _piece_hook_stem(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                     prng: np.random.Generator) -> list[Prim]:
    """A stem segment with one or two hooks curving back from a node."""
    stem_w = max(1.5, W * 0.55)
    prims = [Prim("line", np.array([[-L / 2, 0.0], [L / 2, 0.0]]), c, stem_w, body=True)]
    node = prng.uniform(-0.1, 0.2) * L
    sides = (-1, 1) if prng.random() < 0.7 else (int(prng.choice([-1, 1])),)
    for side in sides:
        a = np.linspace(0.0, 1.25 * np.pi, 9)
        radius = 0.22 * L
        hook = np.stack([node + radius * np.sin(a), side * radius * (1 - np.cos(a))], axis=1)
        prims.append(Prim("line", hook[:6], c, max(1.0, stem_w * 0.8), body=True))
        prims.append(Prim("line", hook[5:], shaded(c, 0.9), max(1.0, stem_w * 0.45), body=True))
    prims.append(Prim("dots", np.array([[-L / 2, 0.0], [L / 2, 0.0]]), s, max(0.6, stem_w * 0.4)))
    return prims


def _piece_stamen(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                  prng: np.random.Generator) -> list[Prim]:
    """Loose bunched filaments, each with a small anther at its tip."""
    prims = []
    for _ in range(int(prng.integers(8, 14))):
        a = prng.normal(0, 0.5)
        end = (np.cos(a) * L * 0.5, np.sin(a) * L * 0.3)
        prims.append(Prim("line", curve((-L / 2, 0.0), end, prng.uniform(-0.2, 0.2)), c, 1.0, body=True))
        prims.append(Prim("dots", np.array([end]), s, max(0.8, W * 0.3)))
    return prims


PIECES: dict[str, Callable[..., list[Prim]]] = {
    "berry": _piece_berry, "fruit": _piece_fruit, "seed": _piece_seed, "kernel": _piece_kernel,
    "root_slice": _piece_root_slice, "twig": _piece_twig, "root": _piece_root, "rhizome": _piece_rhizome,
    "bark": _piece_bark, "peel": _piece_peel, "leaf": _piece_leaf, "flower": _piece_flower,
    "fungus": _piece_fungus, "mineral": _piece_mineral, "shell": _piece_shell, "resin": _piece_resin,
    "gelatin": _piece_gelatin, "hook_stem": _piece_hook_stem, "stamen": _piece_stamen,
}
assert set(PIECES) == set(FORMS)
