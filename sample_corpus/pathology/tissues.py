"""The tissue patterns of the pathology domain: one painter per diagnosis, building a specimen's scene.

Each specimen's layout comes from its own seed, so two adenocarcinomas differ gland by gland; every
view of one specimen shows the same tissue, only rotated, zoomed, moved, re-lit and re-focused, like
a slide re-scanned.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence

import numpy as np

from sample_corpus.pathology.cells import (blob, inside, inside_any, jittered_grid, paint_fibres, paint_fibroblasts,
                                           paint_lymphocytes, paint_neutrophils, paint_nuclei, paint_red_cells,
                                           paint_vessel, stroma_points, uniform_points)
from sample_corpus.pathology.scene import EXTENT, Scene, ellipse_outlines


def _gland(sc: Scene, rng: np.random.Generator, centre: Sequence[float], lumen: float, wall: float,
           irregularity: float, malignant: float, goblets: float) -> np.ndarray:
    """A gland in cross-section: epithelium around a lumen, nuclei at the base of the cells.

    `malignant` (0-1) crowds, enlarges, stratifies and darkens the nuclei and fills the lumen
    with necrotic debris; `goblets` is the fraction of cells that are goblet cells.
    """
    outer = blob(rng, centre, lumen + wall, irregularity)
    inner = np.asarray(centre) + (outer - np.asarray(centre)) * (lumen / (lumen + wall)) * (
        1 + 0.25 * malignant * rng.normal(0, 1, (len(outer), 1)))
    sc.polygons("E", outer[None], rng.uniform(50, 62) - 10 * goblets)
    sc.polygons("clear", inner[None], 4)
    # cells sit along the wall; their nuclei are radial and basal (stratified when malignant)
    perimeter = np.hypot(*np.diff(np.r_[outer, outer[:1]], axis=0).T).sum()
    n = int(perimeter / (3.8 - 1.2 * malignant))
    t = np.sort(rng.uniform(0, len(outer), n))
    i0 = t.astype(int) % len(outer)
    i1 = (i0 + 1) % len(outer)
    frac = (t - np.floor(t))[:, None]
    out_pts = outer[i0] * (1 - frac) + outer[i1] * frac
    in_pts = inner[i0] * (1 - frac) + inner[i1] * frac
    depth = rng.uniform(0.6, 0.8, n) if not malignant else rng.uniform(0.2, 0.85, n)
    xy = in_pts + (out_pts - in_pts) * depth[:, None]
    radial = np.arctan2(*(out_pts - in_pts).T[::-1])
    a = (3.2 + 2.5 * malignant, 4.2 + 3.0 * malignant)
    b = (1.5 + 1.0 * malignant, 2.0 + 1.5 * malignant)
    paint_nuclei(sc, rng, xy, a, b, (120 + 40 * malignant, 150 + 50 * malignant),
                 angle=radial + rng.normal(0, 0.15 + 0.6 * malignant, n), nucleoli=0.4 * malignant)
    if goblets:
        g = rng.random(n) < goblets
        mucin = in_pts[g] + (out_pts[g] - in_pts[g]) * rng.uniform(0.25, 0.4, (g.sum(), 1))
        radii = rng.uniform(2.4, 3.4, g.sum())
        sc.circles("clear", mucin, radii, 14)
        sc.circles("H", mucin, radii, 22)  # mucin is faintly basophilic
    if malignant > 0.3 and rng.random() < 0.6:  # "dirty" necrosis in the lumen
        c = inner.mean(0)
        r = np.abs(inner - c).min() * 0.8 + 1
        debris = c + rng.uniform(-r, r, (int(r * r / 6) + 2, 2))
        sc.circles("E", debris, rng.uniform(1.5, 3.5, len(debris)), rng.uniform(55, 80, len(debris)))
        sc.circles("H", debris[::2], rng.uniform(0.6, 1.3, len(debris[::2])), 200)
    return outer


def _paint_colon_mucosa(sc: Scene, rng: np.random.Generator, p: dict) -> None:
    """Regular crypts in cross-section with goblet cells, in a lamina propria of plasma cells."""
    paint_fibres(sc, rng, 120, (48, 60), (0.8, 1.5), rng.uniform(0, np.pi), 1.2, 30)
    spacing = p["crypt_spacing"]

    def crypt(part: Scene, c: np.ndarray) -> np.ndarray:
        return _gland(part, rng, c, rng.uniform(4, 7), p["crypt_wall"], 0.12, 0.0, p["goblets"])

    outlines = sc.paint_apart(jittered_grid(rng, spacing, spacing * 0.06), crypt)
    lamina_propria = stroma_points(rng, int(p["lamina_cells"] * (2 * EXTENT) ** 2 / 1000), outlines)
    paint_lymphocytes(sc, rng, lamina_propria, 0.85)
    capillaries = stroma_points(rng, 8, outlines)
    sc.paint_apart(capillaries, lambda part, c: paint_vessel(part, rng, c, rng.uniform(3, 5), 0.5))


def _paint_adenocarcinoma(sc: Scene, rng: np.random.Generator, p: dict) -> None:
    """Irregular, angulated and fused glands of atypical cells in desmoplastic stroma."""
    paint_fibres(sc, rng, 380, (55, 85), (0.8, 2.0), rng.uniform(0, np.pi), 0.6, 60)
    grade = p["grade_n"]

    def gland(part: Scene, c: np.ndarray) -> np.ndarray:
        if grade == 3 and rng.random() < 0.6:  # poorly differentiated: solid sheets, no lumen
            outline = blob(rng, c, rng.uniform(18, 30), 0.5)
            part.polygons("E", outline[None], rng.uniform(50, 65))
            cells = jittered_grid(rng, 9.5, 1.5, centre=c, half=55)
            cells = cells[inside(cells, outline)]
            paint_nuclei(part, rng, cells, (4.0, 6.0), (3.0, 4.2), (140, 190), nucleoli=0.5)
            return outline
        outline = _gland(part, rng, c, rng.uniform(8, 15), rng.uniform(13, 17), 0.2 + 0.08 * grade,
                         0.6 + 0.15 * grade, 0.0)
        if rng.random() < 0.35:  # cribriform: a second lumen within the gland
            part.circles("clear", c + rng.normal(0, 4, 2), rng.uniform(3, 5), 4)
        return outline

    outlines = sc.paint_apart(jittered_grid(rng, 70 + 8 * grade, 14, keep=0.9), gland)
    stroma = stroma_points(rng, 260, outlines)
    paint_fibroblasts(sc, rng, stroma[:170])
    paint_lymphocytes(sc, rng, stroma[170:])


def _paint_liver(sc: Scene, rng: np.random.Generator, p: dict) -> None:
    """Hepatocyte plates radiating from a central vein, sinusoids between them; in steatosis,
    some hepatocytes hold a large fat vacuole that pushes the nucleus to the cell edge."""
    fat = p.get("fat_percent", 0) / 100
    centre = np.asarray(p["vein"], dtype=float)
    vein_r = p["vein_r"]
    cell = p["cell_size"]
    radii, angles, arcs = [], [], []
    r = vein_r + cell * 0.6
    while r < EXTENT * 1.5:  # rings of cells; cells of one ring are separated by sinusoids
        n = int(2 * np.pi * r / cell)
        angles.append(rng.uniform(0, 2 * np.pi) + (np.arange(n) + rng.normal(0, 0.1, n)) * 2 * np.pi / n)
        radii.append(r + rng.normal(0, cell * 0.08, n))
        arcs.append(np.full(n, 2 * np.pi * r / n))
        r += cell * 0.92
    rr, th, arc = np.concatenate(radii), np.concatenate(angles), np.concatenate(arcs)
    centres_a = centre + rr[:, None] * np.stack([np.cos(th), np.sin(th)], 1)
    keep = np.abs(centres_a).max(1) < EXTENT + cell
    centres_a, th, arc = centres_a[keep], th[keep], arc[keep]
    n = len(centres_a)
    radial = cell * 0.55  # cells of neighbouring rings touch: the plates run radially
    tangential = (arc - rng.uniform(2.0, 3.5, n)) / 2
    outlines = ellipse_outlines(centres_a, radial, tangential, th, 7) + rng.normal(0, 0.7, (n, 7, 2))
    sc.polygons("E", outlines, rng.uniform(48, 64, n))
    sizes_a = np.minimum(radial, tangential)
    fatty = rng.random(n) < fat
    nuc = centres_a + rng.normal(0, 1.0, (n, 2))
    plain = ~fatty
    paint_nuclei(sc, rng, nuc[plain], (3.3, 4.2), (3.0, 3.8), (105, 140), nucleoli=0.5)
    binucleate = plain & (rng.random(n) < 0.08)
    paint_nuclei(sc, rng, nuc[binucleate] + 5, (3.2, 3.8), (3.0, 3.5), (105, 140))
    if fatty.any():
        k = int(fatty.sum())
        vac_r = sizes_a[fatty] * rng.uniform(0.9, 1.5, k)  # macrovesicular droplets fill the cell
        sc.circles("clear", centres_a[fatty], vac_r, 5)
        edge = rng.uniform(0, 2 * np.pi, k)
        pushed = centres_a[fatty] + (vac_r + 0.5)[:, None] * np.stack([np.cos(edge), np.sin(edge)], 1)
        paint_nuclei(sc, rng, pushed, (3.0, 3.8), (1.2, 1.6), (140, 170), angle=edge + np.pi / 2)
    # Kupffer and endothelial cells at the cell edges, in the sinusoids
    kupffer = centres_a[rng.random(n) < 0.15]
    side = rng.uniform(0, 2 * np.pi, len(kupffer))
    kupffer = kupffer + (cell / 2) * np.stack([np.cos(side), np.sin(side)], 1)
    paint_nuclei(sc, rng, kupffer, (2.8, 3.6), (1.0, 1.4), (150, 185), angle=side + np.pi / 2)
    outline = blob(rng, centre, vein_r, 0.15)
    sc.polygons("E", blob(rng, centre, vein_r + 3, 0.1)[None], 70)
    sc.polygons("clear", outline[None], 5)
    paint_red_cells(sc, rng, outline, 0.15)
    idx = rng.choice(len(outline), 6, replace=False)
    paint_nuclei(sc, rng, outline[idx], (3, 4), (1.0, 1.3), (150, 180))
    # a portal tract: fibrous stroma with a bile duct, a portal vein and a few lymphocytes
    pc = np.asarray(p["portal"], dtype=float)
    tract = blob(rng, pc, 38, 0.3)
    sc.polygons("E", tract[None], 80)
    _fibres_in(sc, rng, pc, 34)
    _gland(sc, rng, pc + [10, -8], 3.5, 6, 0.1, 0.0, 0.0)
    paint_vessel(sc, rng, pc - [12, -6], 10, 0.2)
    cells = pc + rng.normal(0, 16, (40, 2))
    paint_lymphocytes(sc, rng, cells[inside(cells, tract)])


def _fibres_in(sc: Scene, rng: np.random.Generator, centre: np.ndarray, radius: float) -> None:
    paths = []
    for _ in range(18):
        start = centre + rng.uniform(-radius, radius, 2) * 0.7
        heading = rng.uniform(0, np.pi)
        steps = np.cumsum(rng.normal(0, 0.2, 5))
        path = start + np.cumsum(5 * np.stack([np.cos(heading + steps), np.sin(heading + steps)], 1), 0)
        paths.append(np.r_[start[None], path])
    sc.lines("E", paths, 1.2, 105)


def _paint_lymph_node(sc: Scene, rng: np.random.Generator, p: dict) -> None:
    """Sheets of small lymphocytes with follicles (pale germinal centres, dark mantles), a capsule."""
    cells = jittered_grid(rng, p["cell_spacing"], 1.2, keep=0.85)
    follicles = [np.asarray(f[:2], dtype=float) for f in p["follicles"]]
    radii = [f[2] for f in p["follicles"]]
    in_gc = np.zeros(len(cells), bool)
    in_mantle = np.zeros(len(cells), bool)
    for c, r in zip(follicles, radii):
        d = np.hypot(*(cells - c).T)
        in_gc |= d < 0.7 * r
        in_mantle |= (d >= 0.7 * r) & (d < r)
    # capsule and subcapsular sinus along one side of the node
    normal = np.array([math.cos(p["capsule_angle"]), math.sin(p["capsule_angle"])])
    depth = cells @ normal
    capsule_at = EXTENT * 0.72
    in_sinus = (depth > capsule_at - 18) & (depth < capsule_at)
    outside = depth >= capsule_at
    plain = ~(in_gc | in_sinus | outside)
    paint_lymphocytes(sc, rng, cells[plain & ~in_mantle])
    paint_lymphocytes(sc, rng, cells[in_mantle], 1.15)
    gc = cells[in_gc & ~in_sinus]
    keep = rng.random(len(gc)) < 0.55
    paint_nuclei(sc, rng, gc[keep], (3.6, 4.8), (3.0, 4.0), (95, 135), nucleoli=0.4)  # centroblasts
    tbm = gc[rng.random(len(gc)) < 0.03]  # tingible-body macrophages
    sc.circles("E", tbm, rng.uniform(5, 7, len(tbm)), 40)
    sc.circles("H", tbm + rng.normal(0, 1.5, tbm.shape), 1.2, 220)
    sinus = cells[in_sinus]
    keep = rng.random(len(sinus)) < 0.25
    paint_lymphocytes(sc, rng, sinus[keep])
    paint_nuclei(sc, rng, sinus[~keep][::6], (3.5, 4.5), (2.0, 2.6), (90, 120))  # sinus histiocytes
    # the capsule: dense collagen with spindle nuclei
    tangent = np.array([-normal[1], normal[0]])
    paths = []
    for offset in np.arange(capsule_at + 2, EXTENT * 1.5, 3.0):
        t = np.linspace(-EXTENT * 1.5, EXTENT * 1.5, 16)
        wobble = rng.normal(0, 0.8, 16)
        paths.append(offset * normal + t[:, None] * tangent + wobble[:, None] * normal)
    sc.lines("E", paths, 2.5, rng.uniform(90, 120, len(paths)))
    spindles = cells[outside][rng.random(int(outside.sum())) < 0.12]
    paint_nuclei(sc, rng, spindles, (5, 7), (1.0, 1.4), (140, 170),
                 angle=np.full(len(spindles), math.atan2(*tangent[::-1])))


def _paint_breast_idc(sc: Scene, rng: np.random.Generator, p: dict) -> None:
    """Nests, cords and tubules of atypical ductal cells infiltrating dense pink stroma."""
    paint_fibres(sc, rng, 420, (60, 95), (1.0, 2.2), rng.uniform(0, np.pi), 0.5, 70)
    grade = p["grade_n"]
    size = 2.8 + 0.6 * grade

    def nest(part: Scene, c: np.ndarray) -> np.ndarray:
        outline = blob(rng, c, rng.uniform(12, 24 + 4 * grade), 0.6)
        part.polygons("E", outline[None], rng.uniform(42, 55))
        cells = jittered_grid(rng, 2 * size + 5, 1.5, centre=c, half=70)
        cells = cells[inside(cells, outline)]
        paint_nuclei(part, rng, cells, (size, size + 0.8 * grade), (size - 0.6, size + 0.3 * grade),
                     (105 + 15 * grade, 140 + 15 * grade), nucleoli=0.25 * grade)
        if rng.random() < {1: 0.7, 2: 0.35, 3: 0.05}[grade]:  # tubule formation
            part.circles("clear", c + rng.normal(0, 2, 2), rng.uniform(3, 6), 4)
        return outline

    outlines = sc.paint_apart(jittered_grid(rng, 52, 15, keep=0.8), nest)
    mitoses = uniform_points(rng, p["mitoses_drawn"])
    mitoses = mitoses[inside_any(mitoses, outlines)]
    # a mitotic figure: a clump of dark chromosome fragments
    sc.circles("H", (mitoses[:, None] + rng.normal(0, 1.8, (len(mitoses), 7, 2))).reshape(-1, 2), 1.1, 240)
    stroma = stroma_points(rng, 220, outlines)
    paint_fibroblasts(sc, rng, stroma[:120])
    paint_lymphocytes(sc, rng, stroma[120:])


def _paint_scc(sc: Scene, rng: np.random.Generator, p: dict) -> None:
    """Nests of large eosinophilic squamous cells with basaloid rims and keratin pearls."""
    paint_fibres(sc, rng, 300, (55, 80), (1.0, 2.0), rng.uniform(0, np.pi), 0.8, 50)
    grade = p["grade_n"]
    size = 3.2 + 0.6 * grade

    def nest(part: Scene, c: np.ndarray) -> np.ndarray:
        radius = rng.uniform(34, 50)
        outline = blob(rng, c, radius, 0.4)
        part.polygons("E", outline[None], rng.uniform(78, 95))
        cells = jittered_grid(rng, 15 - 1.5 * grade, 1.5, centre=c, half=radius * 1.8)
        cells = cells[inside(cells, outline)]
        inner = inside(cells, c + (outline - c) * 0.78)  # the rim is left to the basaloid palisade
        edge = outline + (c - outline) * 0.08
        paint_nuclei(part, rng, edge, (3.2, 4.0), (1.8, 2.2), (140, 175), angle=np.arctan2(*(c - edge).T[::-1]))
        if rng.random() < p["pearl_rate"]:
            pearl = c + rng.normal(0, 3, 2)
            pr = radius * rng.uniform(0.45, 0.6)
            inner &= np.hypot(*(cells - pearl).T) > pr + size  # the pearl has replaced these cells
            _keratin_pearl(part, rng, pearl, pr)
        paint_nuclei(part, rng, cells[inner], (size, size + 1.4), (size - 0.7, size + 0.6), (95, 145), nucleoli=0.35)
        return outline

    outlines = sc.paint_apart(jittered_grid(rng, 110, 20, keep=0.85), nest)
    stroma = stroma_points(rng, 320, outlines)
    paint_lymphocytes(sc, rng, stroma[:200])
    paint_fibroblasts(sc, rng, stroma[200:])


def _keratin_pearl(sc: Scene, rng: np.random.Generator, centre: np.ndarray, radius: float) -> None:
    """Concentric lamellae of keratin, orange-pink, with a few flattened nuclei."""
    rings = np.arange(radius, 1.5, -3.2)
    sc.circles("E", np.repeat(centre[None], len(rings), 0), rings, np.where(np.arange(len(rings)) % 2, 100, 165))
    sc.circles("R", centre, radius * 0.85, 25)
    t = rng.uniform(0, 2 * np.pi, 5)
    flat = centre + (radius * rng.uniform(0.3, 0.8, 5))[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
    paint_nuclei(sc, rng, flat, (2.5, 3.5), (0.8, 1.0), (170, 200), angle=t + np.pi / 2)


def _paint_granuloma(sc: Scene, rng: np.random.Generator, p: dict) -> None:
    """Nodules of epithelioid histiocytes with Langhans giant cells, a lymphocytic cuff and, when
    caseating, central amorphous necrosis."""
    paint_fibres(sc, rng, 150, (45, 62), (0.8, 1.6), rng.uniform(0, np.pi), 1.0, 40)
    bg = uniform_points(rng, 1500)
    nodules = [(np.asarray(g[:2], dtype=float), g[2]) for g in p["granulomas"]]
    outlines = [blob(rng, c, r, 0.2) for c, r in nodules]
    cuffs = [c + (o - c) * 1.35 for o, (c, _) in zip(outlines, nodules)]
    in_cuff = inside_any(bg, cuffs) & ~inside_any(bg, outlines)
    paint_lymphocytes(sc, rng, bg[in_cuff])
    paint_lymphocytes(sc, rng, bg[~inside_any(bg, cuffs)][::3])
    for outline, (c, r) in zip(outlines, nodules):
        sc.polygons("E", outline[None], 52)
        cells = jittered_grid(rng, 10.5, 2.0, centre=c, half=r * 1.8)
        cells = cells[inside(cells, outline)]
        if p["caseating"]:
            core = blob(rng, c, r * 0.45, 0.3)
            cells = cells[~inside(cells, core)]
            sc.polygons("E", core[None], 72)  # caseous necrosis: amorphous, granular, pink
            dust = c + rng.normal(0, r * 0.2, (140, 2))
            dust = dust[inside(dust, core)]
            sc.circles("H", dust, rng.uniform(0.5, 1.1, len(dust)), rng.uniform(90, 150, len(dust)))
        giants = []
        for _ in range(p["giant_cells"]):
            angle = rng.uniform(0, 2 * np.pi)
            centre = c + (r * rng.uniform(0.55, 0.7)) * np.array([math.cos(angle), math.sin(angle)])
            giants.append((centre, rng.uniform(20, 27)))
            cells = cells[np.hypot(*(cells - centre).T) > giants[-1][1] + 3]
        # epithelioid histiocytes: pale, elongated, slipper-shaped nuclei
        paint_nuclei(sc, rng, cells, (5.0, 6.5), (2.3, 3.0), (60, 90))
        for centre, gr in giants:
            sc.polygons("E", blob(rng, centre, gr, 0.15)[None], 80)
            # Langhans cell: nuclei in a horseshoe at the periphery of the cytoplasm
            t = rng.uniform(0, 2 * np.pi) + np.linspace(0.7, 2 * np.pi - 0.7, int(rng.integers(12, 18)))
            ring = centre + (gr * 0.78) * np.stack([np.cos(t), np.sin(t)], 1)
            paint_nuclei(sc, rng, ring, (3.2, 3.8), (2.0, 2.5), (110, 140), angle=t)


def _paint_acute_inflammation(sc: Scene, rng: np.random.Generator, p: dict) -> None:
    """Oedematous wall (smooth muscle bundles) flooded by neutrophils, fibrin and congested vessels."""
    angle = rng.uniform(0, np.pi)
    paint_fibres(sc, rng, 90, (35, 50), (0.6, 1.2), angle, 1.5, 30)
    direction = np.array([math.cos(angle), math.sin(angle)])
    muscle = uniform_points(rng, 700)
    muscle = muscle[muscle @ np.array([-direction[1], direction[0]]) > p["muscle_edge"]]
    # smooth muscle: pink fascicles with cigar-shaped nuclei along them
    bundles = [m + np.outer(np.linspace(-25, 25, 6), direction) for m in muscle[::3]]
    sc.lines("E", bundles, 5.0, 62)
    nuclei = muscle[1::3]
    paint_nuclei(sc, rng, nuclei, (5.5, 7.5), (1.2, 1.6), (130, 165), angle=np.full(len(nuclei), angle))
    strands = []
    for x, y in uniform_points(rng, 45):
        steps = np.cumsum(rng.normal(0, 0.5, 6))
        heading = rng.uniform(0, 2 * np.pi)
        pts = np.cumsum(5 * np.stack([np.cos(heading + steps), np.sin(heading + steps)], 1), 0)
        strands.append(np.r_[[[x, y]], pts + [x, y]])
    sc.lines("E", strands, 1.0, 95)  # fibrin
    sc.paint_apart(uniform_points(rng, 5), lambda part, c: paint_vessel(part, rng, c, rng.uniform(6, 11), 1.0))
    density = p["neutrophil_density"]
    diffuse = uniform_points(rng, int(density * 900))
    abscess = np.asarray(p["abscess"][:2]) + rng.normal(0, p["abscess"][2], (int(density * 500), 2))
    paint_neutrophils(sc, rng, np.concatenate([diffuse, abscess]))
    paint_lymphocytes(sc, rng, uniform_points(rng, 120))


def _paint_necrosis(sc: Scene, rng: np.random.Generator, p: dict) -> None:
    """Coagulative necrosis: ghost outlines of cells and glands without nuclei, nuclear dust,
    with viable tissue and an inflammatory rim along one edge."""
    cells = jittered_grid(rng, 13, 2.0)
    sc.circles("E", cells, rng.uniform(5.0, 6.2, len(cells)), rng.uniform(78, 96, len(cells)))
    for c in uniform_points(rng, 10):  # ghost glands / tubules
        outline = blob(rng, c, rng.uniform(16, 24), 0.2)
        sc.polygons("E", outline[None], 96)
        sc.polygons("E", (c + (outline - c) * 0.55)[None], 58)
    dust = uniform_points(rng, 700)
    sc.circles("H", dust, rng.uniform(0.5, 1.2, len(dust)), rng.uniform(120, 220, len(dust)))
    pyknotic = uniform_points(rng, 60)
    sc.circles("H", pyknotic, rng.uniform(1.6, 2.3, len(pyknotic)), 245)
    for c in uniform_points(rng, 4):  # extravasated blood
        paint_red_cells(sc, rng, blob(rng, c, rng.uniform(12, 22), 0.4), 0.5)
    normal = np.array([math.cos(p["viable_angle"]), math.sin(p["viable_angle"])])
    border = uniform_points(rng, 2600)
    depth = border @ normal
    viable = border[depth > p["viable_edge"]]
    rim = border[(depth > p["viable_edge"] - 20) & (depth <= p["viable_edge"])]
    sc.polygons("E", _rect(normal, p["viable_edge"])[None], 52)
    paint_nuclei(sc, rng, viable[: len(viable) // 3], (3.0, 4.0), (2.4, 3.2), (140, 180))
    paint_neutrophils(sc, rng, rim[: len(rim) // 2])


def _rect(normal: np.ndarray, start: float) -> np.ndarray:
    """The half-plane beyond `start` along `normal`, clipped to the tissue extent."""
    tangent = np.array([-normal[1], normal[0]])
    far = EXTENT * 1.5
    return np.array([start * normal - far * tangent, start * normal + far * tangent,
                     far * normal + far * tangent, far * normal - far * tangent])


PAINTERS: dict[str, tuple[float, Callable[[Scene, np.random.Generator, dict], None]]] = {
    # diagnosis: (eosin of the background, painter)
    "normal_colon": (44, _paint_colon_mucosa),
    "normal_liver": (20, _paint_liver),
    "steatosis": (20, _paint_liver),
    "lymph_node": (30, _paint_lymph_node),
    "colon_adenocarcinoma": (58, _paint_adenocarcinoma),
    "breast_idc": (62, _paint_breast_idc),
    "scc": (55, _paint_scc),
    "granuloma": (40, _paint_granuloma),
    "acute_inflammation": (28, _paint_acute_inflammation),
    "necrosis": (86, _paint_necrosis),
}


@functools.lru_cache(maxsize=64)
def tissue_scene(params_json: str) -> Scene:
    """The specimen's tissue, built once: the builder photographs each specimen several times."""
    p = json.loads(params_json)
    sc = Scene()
    PAINTERS[p["diagnosis"]][1](sc, np.random.default_rng(p["layout_seed"]), p)
    return sc
