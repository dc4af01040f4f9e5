"""Drawing a colour fundus photograph: the patient's retina, then its acquisition by the camera.

The retina (pigmentation, choroidal texture, macula, optic disc with its cup, a vessel tree grown
from the patient's seed, lesions at fixed places) is rendered once per patient in a canonical frame
centred on the camera field, with +x pointing temporally (towards the macula) and +y inferiorly;
a right eye is the mirror image, its disc on the right of the photograph as in a real right-eye
fundus photo. Each photograph only varies the acquisition: small rotation, zoom, centring,
illumination, colour cast, focus and sensor noise.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sample_corpus.acquisition import photo_variant
from sample_corpus.domain import IMAGE_SIZE

FIELD_R = 104.0  # radius of the camera's circular field in the output image, pixels
CONTENT = 256  # the retina is rendered on a larger canvas so rotation and zoom never run out of it
SS = 2  # supersampling of vessels and lesions, for anti-aliased thin lines

_YY, _XX = np.mgrid[0:CONTENT, 0:CONTENT].astype(np.float32) - CONTENT / 2
_OY, _OX = (np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) - IMAGE_SIZE / 2) / FIELD_R
_VIGNETTE = np.hypot(_OX, _OY) ** 2.2  # light falls off towards the edge of the field
_FIELD_MASK = np.clip((1 - np.hypot(_OX, _OY)) * FIELD_R / 1.5 + 0.5, 0, 1)[..., None]

# Main vessel trunks leaving the disc: initial heading (degrees, +x temporal, +y inferior),
# turning per step (the temporal arcades curve around the macula, the nasal ones stay straighter).
_TRUNKS = ((-70.0, 3.2), (70.0, -3.2), (-122.0, -0.8), (122.0, 0.8), (-170.0, 0.3))
_STEP = 3.0


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise over the content canvas (bicubic upsampled random grid)."""
    grid = Image.fromarray(rng.normal(0, 1, (cells, cells)).astype(np.float32), "F")
    return np.asarray(grid.resize((CONTENT, CONTENT), Image.BICUBIC), dtype=np.float32)


def _vessel_tree(p: dict) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Branches (points, widths, kind) of the patient's retinal vessels, grown from their seed.

    Each branch follows a planned arc (the temporal arcades curve around the macula) plus a
    mean-reverting wiggle, so vessels are tortuous without wandering off their course.
    """
    rng = np.random.default_rng(p["vessel_seed"])
    fx, fy = p["fovea"]
    limit = CONTENT / 2 - 4
    branches: list[tuple[np.ndarray, np.ndarray, str]] = []
    beading = p["beading"]

    def grow(x: float, y: float, heading: float, bias: float, width: float, steps: int, depth: int,
             kind: str) -> None:
        wiggle = rng.normal(0, p["tortuosity"], steps)
        pts, widths = [(x, y)], [width]
        dev = 0.0
        next_branch = int(rng.integers(5, 12))
        for i in range(steps):
            dev = 0.85 * dev + wiggle[i]
            heading += bias
            bias *= 0.97
            a = math.radians(heading + dev)
            x, y = x + _STEP * math.cos(a), y + _STEP * math.sin(a)
            width *= 0.99
            if math.hypot(x, y) > limit or math.hypot(x - fx, y - fy) < 9 or width < 0.45:
                break
            pts.append((x, y))
            widths.append(width * (1 + 0.45 * math.sin(1.3 * i)) if beading and kind == "vein" else width)
            if i == next_branch and depth < 3:
                side = 1 if rng.random() < 0.5 else -1
                grow(x, y, heading + dev + side * rng.uniform(30, 65), float(rng.normal(0, 0.8)),
                     width * rng.uniform(0.5, 0.7), int(rng.integers(8, 30) * 0.75**depth), depth + 1, kind)
                width *= 0.9
                next_branch = i + int(rng.integers(6, 14))
        branches.append((np.array(pts), np.array(widths), kind))

    dx, dy = p["disc"]
    engorged = 1.0 + 0.06 * p["frisen"]  # papilledema dilates the veins
    for kind, w0 in (("vein", p["vein_width"] * engorged), ("artery", p["vein_width"] * 0.7)):
        for heading, bias in _TRUNKS:
            grow(dx - 0.15 * p["disc_r"], dy + float(rng.normal(0, 1.5)), heading + float(rng.normal(0, 5)),
                 bias * rng.uniform(0.85, 1.15), w0, 70, 0, kind)
    return branches


def _fine_vessels(rng: np.random.Generator, centre: Sequence[float], radius: float, count: int,
                  ) -> list[np.ndarray]:
    """Tortuous fine loops (new vessels or IRMA) wandering from `centre` within `radius`."""
    cx, cy = centre
    loops = []
    for _ in range(count):
        heading = rng.uniform(0, 2 * math.pi)
        x, y = rng.normal(centre, radius * 0.2)
        pts = [(x, y)]
        for turn in rng.normal(0, 0.8, int(rng.integers(6, 12))):
            heading += turn
            x, y = x + radius / 5 * math.cos(heading), y + radius / 5 * math.sin(heading)
            if math.hypot(x - cx, y - cy) > radius:
                heading += 2.6  # turn back towards the centre
            pts.append((x, y))
        loops.append(np.array(pts))
    return loops


def _ellipse(x: float, y: float, rx: float, ry: float, angle: float, n: int = 10) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    a = math.radians(angle)
    ex, ey = rx * np.cos(t), ry * np.sin(t)
    return np.stack([x + ex * math.cos(a) - ey * math.sin(a), y + ex * math.sin(a) + ey * math.cos(a)], 1)


class _Masks:
    """Supersampled greyscale masks in canonical coordinates, mirrored for right eyes."""

    def __init__(self, sign: float) -> None:
        self.sign = sign
        self.images: dict[str, Image.Image] = {}
        self.draws: dict[str, ImageDraw.ImageDraw] = {}

    def draw(self, name: str) -> ImageDraw.ImageDraw:
        if name not in self.images:
            self.images[name] = Image.new("L", (CONTENT * SS, CONTENT * SS), 0)
            self.draws[name] = ImageDraw.Draw(self.images[name])
        return self.draws[name]

    def xy(self, pts: np.ndarray) -> list[float]:
        out = np.empty_like(pts, dtype=float)
        out[:, 0] = (CONTENT / 2 + self.sign * pts[:, 0]) * SS
        out[:, 1] = (CONTENT / 2 + pts[:, 1]) * SS
        return out.ravel().tolist()

    def dot(self, draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: int) -> None:
        cx, cy = self.xy(np.array([[x, y]]))
        draw.ellipse((cx - r * SS, cy - r * SS, cx + r * SS, cy + r * SS), fill=fill)

    def paint(self, img: Image.Image, name: str, rgb: Sequence[float], blur: float = 0.0) -> None:
        """Paint colour `rgb` onto `img` through mask `name` (anti-aliased by downsampling)."""
        if name not in self.images:
            return
        mask = self.images[name].reduce(SS)
        if blur:
            mask = mask.filter(ImageFilter.GaussianBlur(blur))
        img.paste(tuple(int(c) for c in rgb), (0, 0, CONTENT, CONTENT), mask)


def _draw_vessels(masks: _Masks, p: dict) -> None:
    for pts, widths, kind in _vessel_tree(p):
        draw = masks.draw(kind)
        xy = masks.xy(pts)
        w2 = np.maximum(1, np.round(widths * SS)).astype(int)
        start = 0
        for i in range(1, len(pts) + 1):  # one polyline per run of equal width
            if i == len(pts) or w2[i] != w2[start]:
                first = max(start - 1, 0)
                if i - first >= 2:
                    draw.line(xy[2 * first:2 * i], fill=255, width=int(w2[start]), joint="curve")
                start = i
    for x, y, radius, seed in p["nv"] + p["irma"]:
        loops = _fine_vessels(np.random.default_rng(seed), (x, y), radius, 14 if radius > 8 else 5)
        draw = masks.draw("artery")
        for loop in loops:
            draw.line(masks.xy(loop), fill=230, width=SS, joint="curve")


def _draw_lesions(masks: _Masks, p: dict) -> None:
    red = masks.draw("red") if p["microaneurysms"] or p["flame"] or p["splinter"] else None
    for x, y, r in p["microaneurysms"]:
        masks.dot(red, x, y, r, 255)
    for x, y, rx, ry, a in p["haemorrhages"]:
        red.polygon(masks.xy(_ellipse(x, y, rx, ry, a)), fill=235)
    for x, y, length, width, a in p["flame"] + p["splinter"]:
        red.polygon(masks.xy(_ellipse(x, y, length / 2, width / 2, a)), fill=225)
    for x, y, w, h in p["preretinal"]:
        # boat-shaped: a flat fluid level on top, a rounded bottom
        t = np.linspace(0, math.pi, 12)
        boat = np.stack([x + w * np.cos(t), y + h * np.sin(t)], 1)
        red.polygon(masks.xy(boat), fill=255)
    if p["exudates"]:
        yellow = masks.draw("exudate")
        for x, y, r in p["exudates"]:
            masks.dot(yellow, x, y, r, 255)
    if p["cotton_wool"]:
        white = masks.draw("cotton_wool")
        for x, y, rx, ry, a in p["cotton_wool"]:
            white.polygon(masks.xy(_ellipse(x, y, rx, ry, a)), fill=210)


def _blend(img: np.ndarray, alpha: np.ndarray | None, rgb: Sequence[float]) -> np.ndarray:
    if alpha is None:
        return img
    return img * (1 - alpha) + np.asarray(rgb, dtype=np.float32) * alpha


def _window(sign: float, centre: Sequence[float], half: float) -> tuple[tuple[slice, slice], np.ndarray,
                                                                        np.ndarray]:
    """Content-canvas slices around a canonical point and the canonical x, y of their pixels:
    smooth features (disc, macula) are computed only where they are."""
    col, row = CONTENT / 2 + sign * centre[0], CONTENT / 2 + centre[1]
    rows = slice(max(0, int(row - half)), min(CONTENT, int(row + half) + 1))
    cols = slice(max(0, int(col - half)), min(CONTENT, int(col + half) + 1))
    return (rows, cols), sign * _XX[rows, cols], _YY[rows, cols]


def _paint_macula(img: np.ndarray, p: dict, sign: float) -> None:
    win, x, y = _window(sign, p["fovea"], 50)
    d2 = (x - p["fovea"][0]) ** 2 + (y - p["fovea"][1]) ** 2
    dark = p["macula_dark"] * np.exp(d2 / (-2 * 17.0**2))
    img[win] *= 1 - dark[..., None] * np.array([0.7, 1.0, 1.0], dtype=np.float32)
    img[win] += (70 * np.exp(d2 / (-2 * 1.3**2)))[..., None]  # foveal reflex


def _disc_radius(p: dict) -> float:
    return p["disc_r"] * (1 + 0.12 * p["frisen"])  # a swollen disc looks larger


def _disc_geometry(p: dict, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Elliptic radius (1 at the disc margin), polar angle and disc-normalised x, y of each pixel."""
    rx = _disc_radius(p)
    u, v = (x - p["disc"][0]) / rx, (y - p["disc"][1]) / (rx * 1.08)
    return np.hypot(u, v), np.arctan2(v, u), u, v


def _disc_colour(p: dict) -> np.ndarray:
    rgb = np.asarray(p["disc_rgb"], dtype=np.float32)
    if p["frisen"]:  # a swollen disc is hyperaemic
        rgb = rgb * np.array([1.0, 0.85, 0.85], dtype=np.float32) * (1 - 0.03 * p["frisen"])
    return rgb


def _paint_disc(img: np.ndarray, p: dict, sign: float) -> None:
    """Optic disc with its cup (and notch), peripapillary atrophy, and margin blur of swelling."""
    win, x, y = _window(sign, p["disc"], _disc_radius(p) * 2.4)
    rho, phi, u, v = _disc_geometry(p, x, y)
    patch = img[win]
    grade = p["frisen"]
    if p["ppa"]:
        # beta-zone atrophy: a pale crescent on the temporal side of the disc
        crescent = np.clip((1.35 - rho) / 0.1, 0, 1) * np.clip((rho - 0.9) / 0.1, 0, 1)
        crescent *= np.clip(np.cos(phi), 0, 1) ** 1.5 * (0.8 * p["ppa"])
        patch = _blend(patch, crescent[..., None], (225, 195, 160))
    edge = 0.08 + 0.12 * grade
    if grade == 1:  # Frisén 1: only the nasal margin is blurred
        edge = 0.08 + 0.3 * np.clip(-np.cos(phi), 0, 1)
    disc_alpha = np.clip((1 - rho) / edge + 0.5, 0, 1)
    patch = _blend(patch, disc_alpha[..., None], _disc_colour(p))
    cup_v = p["cdr"]
    if p["notch"] != "none":
        pole = math.pi / 2 if p["notch"] == "inferior" else -math.pi / 2
        cup_v = cup_v + (0.94 - cup_v) * np.exp(-((phi - pole * 0.9) / 0.35) ** 2)
    cup_rho = np.hypot((u - 0.08) / (0.9 * p["cdr"]), v / cup_v)
    cup_alpha = np.clip((1 - cup_rho) / 0.25 + 0.5, 0, 1) * (0.9 * max(0.0, 1 - grade / 2.5))
    img[win] = _blend(patch, cup_alpha[..., None], (252, 236, 205))


def _paint_swelling(img: Image.Image, p: dict, sign: float) -> None:
    """Swollen nerve fibres cover the vessels at the disc margin (and on the disc when severe)."""
    grade = p["frisen"]
    win, x, y = _window(sign, p["disc"], _disc_radius(p) * 3.0)
    rho, phi, _, _ = _disc_geometry(p, x, y)
    # a greyish halo of swollen nerve fibres, with radial striations
    halo = np.exp(-((rho - 1.05) / (0.25 + 0.06 * grade)) ** 2) * (0.9 + 0.1 * np.cos(26 * phi))
    if grade >= 4:
        halo = np.maximum(halo, np.clip(1.05 - rho, 0, 1) * (grade - 3) / 2 + 0.3 * (rho < 1))
    if grade == 1:
        halo *= np.clip(-np.cos(phi), 0, 1)
    alpha = Image.fromarray((255 * (0.3 + 0.12 * grade) * np.clip(halo, 0, 1)).astype(np.uint8), "L")
    rows, cols = win
    img.paste(tuple(int(c) for c in _disc_colour(p) * 0.95 + 10), (cols.start, rows.start, cols.stop, rows.stop),
              alpha)


@functools.lru_cache(maxsize=64)
def _render_retina(params_json: str) -> Image.Image:
    """The patient's retina on the content canvas, before any acquisition effect.

    The builder photographs each patient several times in a row; the retina is the same every
    time, so it is rendered once and only the acquisition is redone.
    """
    p = json.loads(params_json)
    sign = 1.0 if p["eye"] == "left" else -1.0
    tex = np.random.default_rng(p["texture_seed"])
    shade = 1 + 0.06 * _smooth_noise(tex, 10)
    # Choroidal vessels show through a thin pigment epithelium as a network of lighter bands:
    # the zero crossings of smooth noise draw such a network.
    choroid = np.exp(-(_smooth_noise(tex, 28) / 0.25) ** 2)
    img = np.asarray(p["retina_rgb"], dtype=np.float32) * (shade + p["tessellation"] * (choroid - 0.3))[..., None]
    _paint_macula(img, p, sign)
    _paint_disc(img, p, sign)
    retina = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    masks = _Masks(sign)
    _draw_vessels(masks, p)
    masks.paint(retina, "vein", p["vein_rgb"])
    masks.paint(retina, "artery", p["artery_rgb"])
    if p["frisen"]:
        _paint_swelling(retina, p, sign)
    _draw_lesions(masks, p)
    masks.paint(retina, "red", np.asarray(p["vein_rgb"]) * 0.85)
    masks.paint(retina, "exudate", (235, 205, 95))
    masks.paint(retina, "cotton_wool", (238, 228, 210), blur=1.2)
    return retina


def photograph(p: dict, rng: np.random.Generator) -> Image.Image:
    """One fundus photograph of the patient described by `p` (the case's params)."""
    return _acquire(_render_retina(json.dumps(p, sort_keys=True)), rng)


def _acquire(retina: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Photograph the retina: framing, vignetting, uneven illumination, colour cast, focus, noise."""
    angle = math.radians(rng.uniform(-6, 6))
    zoom = rng.uniform(0.94, 1.07)
    shift = rng.normal(0, 2.0, 2)
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    o = IMAGE_SIZE / 2
    cx, cy = CONTENT / 2 + shift[0], CONTENT / 2 + shift[1]
    framed = retina.transform((IMAGE_SIZE, IMAGE_SIZE), Image.AFFINE,
                              (c, s, cx - c * o - s * o, -s, c, cy + s * o - c * o), Image.BILINEAR)
    arr = np.asarray(framed, dtype=np.float32)
    tilt = rng.uniform(0, 2 * math.pi)
    light = 1 - rng.uniform(0.3, 0.45) * _VIGNETTE \
        + rng.uniform(-0.07, 0.07) * (math.cos(tilt) * _OX + math.sin(tilt) * _OY)
    cast = rng.normal(1.0, 0.03, 3).astype(np.float32)
    arr = arr * light[..., None] * cast
    photo = photo_variant(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), rng,
                          max_rotate=0.0, scale=(1.0, 1.0), lighting=(0.92, 1.08),
                          noise_sd=(1.5, 5.0), blur=0.9)
    return Image.fromarray((np.asarray(photo, dtype=np.float32) * _FIELD_MASK).astype(np.uint8), "RGB")
