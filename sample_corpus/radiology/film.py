"""Drawing a chest radiograph (domain `radiology`): a grayscale PA film stored as RGB.

The film shows dark lungs with branching vascular markings, posterior and anterior ribs, clavicles,
trachea, spine and mediastinum with the aortic knob, a heart whose width is the case's
cardiothoracic ratio times the thoracic width, diaphragm domes with costophrenic recesses and a
gastric bubble, and the lesion. Image left is the patient's right, as on any PA film, and carries
the usual "R" side marker. Anatomy and lesion geometry come from the case's params and
per-patient seeds; the rng passed to `draw_film` only changes the acquisition (rotation,
magnification, exposure, noise).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sample_corpus.acquisition import photo_variant
from sample_corpus.domain import IMAGE_SIZE

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def patient_anatomy(sex: str, rng: np.random.Generator) -> dict[str, Any]:
    """The patient's body: thorax size, lung height, diaphragm, rib spacing and heart shape.

    The report takes its rib count and thoracic width from here."""
    apex = float(rng.uniform(30, 40))
    dome = float(rng.uniform(156, 170))
    ribs_visible = int(rng.integers(9, 12))
    first_rib = apex + float(rng.uniform(2, 6))
    return {
        "seed": int(rng.integers(0, 2**31 - 1)),
        "centre_x": round(float(rng.uniform(-4, 4)), 1),
        "thorax_half_width": round(float(rng.uniform(78, 92)), 1),
        "apex_y": round(apex, 1),
        "dome_right_y": round(dome, 1),
        "dome_left_y": round(dome + float(rng.uniform(4, 10)), 1),  # the left dome sits lower
        "dome_height": round(float(rng.uniform(14, 24)), 1),
        "mediastinum_half_width": round(float(rng.uniform(11, 16)), 1),
        "first_rib_y": round(first_rib, 1),
        # Ribs are spaced so that the reported number of posterior ribs lies above the right dome.
        "rib_gap": round((dome - first_rib) / (ribs_visible - 0.5), 2),
        "ribs_visible": ribs_visible,
        "heart_height": round(float(rng.uniform(40, 52)), 1),
        "heart_right_fraction": round(float(rng.uniform(0.3, 0.4)), 3),
        "soft_tissue": round(float(rng.uniform(0.36, 0.48)), 3),
        "breasts": sex == "woman",
        "bubble_x": round(float(rng.uniform(0.3, 0.6)), 3),
    }


def draw_film(p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    """One film of the patient described by `p` (the case's params)."""
    a = _Anatomy(p)
    soft = p["soft_tissue"]
    film = np.where(a.body, soft, 0.03).astype(np.float32)  # 0.03: unattenuated beam outside the body
    film[a.abdomen] = soft + 0.15
    bubble = ((_XX - a.cx - p["bubble_x"] * a.tw) / 13) ** 2 + ((_YY - a.dome_l - 11) / 6) ** 2 < 1
    film[bubble & a.abdomen] -= 0.25

    side_sign = {"right": -1, "left": 1}.get(p.get("side", ""), 0)
    rim = p.get("rim_px", 0.0)
    # The patient's own vessels and lesion texture: the same on every film of this case.
    vessels = _vessels(a, np.random.default_rng([p["seed"], 1]), p.get("upper_lobe_diversion", False))
    for s in (-1, 1):
        film[a.lung(s)] = 0.03  # what a pneumothorax leaves: pleural air without lung markings
        film += a.lung(s, rim if s == side_sign else 0.0) * (0.09 + 0.4 * vessels)
    film[a.mediastinum] = soft + 0.2
    film[a.trachea] -= 0.18
    film += 0.06 * a.spine
    film[a.heart] = soft + 0.22

    if "lobe" in p:
        film = _consolidation(film, a, p, np.random.default_rng([p["seed"], 3]))
    if "effusion_height_px" in p:
        film = _effusion(film, a, side_sign, p)
    if rim:
        film = _pleural_line(film, a, side_sign, a.lung(side_sign, rim))
    if p["breasts"]:
        for s in (-1, 1):
            film += 0.08 * a.body * np.exp(-((_XX - a.cx - s * 0.55 * a.tw) / 30) ** 2
                                           - ((_YY - a.dome_r + 12) / 22) ** 2)

    # Bone shows best against aerated lung and fades behind the heart, fluid and the upper abdomen.
    visibility = 0.2 + 0.8 * np.clip((soft + 0.1 - film) / 0.25, 0, 1)
    film += _bones(a) * visibility * a.body
    layer = Image.fromarray(np.clip(film * 255, 0, 255).astype(np.uint8), "L")
    ImageDraw.Draw(layer).text((12, 10), "R", fill=240)
    layer = layer.filter(ImageFilter.GaussianBlur(0.7))
    # Exposure: the same anatomy looks lighter or darker with kV/mAs and processing.
    gamma = float(rng.uniform(0.85, 1.15))
    image = layer.point([round(255 * (i / 255) ** gamma) for i in range(256)]).convert("RGB")
    # Films are taken at a fixed focus distance: small magnification changes, zoom-in only so no
    # artificial black frame appears.
    return photo_variant(image, rng, max_rotate=3.0, scale=(1.0, 1.07), lighting=(0.88, 1.12),
                         noise_sd=(2.0, 6.0), blur=0.5, fill=(0, 0, 0))


def _vessels(a: _Anatomy, fixed: np.random.Generator, diversion: bool) -> np.ndarray:
    """Branching vascular markings radiating from each hilum, fading towards the periphery."""
    layer = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    d = ImageDraw.Draw(layer)
    for s in (-1, 1):
        hx, hy = a.cx + s * (a.med + 8), a.hilum
        d.ellipse([hx - 8, hy - 12, hx + 8, hy + 12], fill=140)
        for k in range(13):
            # theta runs from upwards (-) through lateral (0) to downwards (+) for this side.
            theta = -1.3 + 2.6 * (k + fixed.uniform(-0.3, 0.3)) / 12
            # Upper-lobe vessels are normally thinner; in venous diversion they match the lower ones.
            width = 2 if (theta < -0.2 and not diversion) else 3
            x, y = hx, hy
            for step in range(4):
                length = 13 + fixed.uniform(-3, 5)
                nx, ny = x + s * length * np.cos(theta), y + length * np.sin(theta)
                d.line([x, y, nx, ny], fill=int(170 - 32 * step), width=max(1, width - step))
                if fixed.random() < 0.6:
                    branch = theta + fixed.choice([-1, 1]) * fixed.uniform(0.4, 0.8)
                    bl = length * 0.7
                    d.line([nx, ny, nx + s * bl * np.cos(branch), ny + bl * np.sin(branch)],
                           fill=int(130 - 30 * step), width=1)
                theta += fixed.normal(0, 0.15)
                x, y = nx, ny
    return np.asarray(layer.filter(ImageFilter.GaussianBlur(0.7)), np.float32) / 255.0


def _bones(a: _Anatomy) -> np.ndarray:
    """Posterior ribs (bright arcs), fainter anterior ribs and the clavicles."""
    layer = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    d = ImageDraw.Draw(layer)
    fractions = np.linspace(0.0, 1.0, 16)
    for k in range(a.ribs + 2):
        y0 = a.first_rib + k * a.rib_gap
        reach = a.tw * (0.6 + 0.4 * min(1.0, k / 5))
        drop = 22 + 1.5 * k  # lower ribs slope more steeply
        for s in (-1, 1):
            # A posterior rib leaves the spine, arches up a little and curves down to the lateral wall.
            back = [(a.cx + s * (8 + f * reach), y0 - 5 * np.sin(np.pi * f) + drop * f ** 1.8)
                    for f in fractions]
            d.line(back, fill=46, width=max(3, int(a.rib_gap * 0.42)))
            if k < a.ribs - 3:
                # Anterior ribs run from the lateral wall down and inwards to the costal cartilages.
                ya = y0 + drop + 4
                front = [(a.cx + s * (reach * (1 - 0.55 * f)), ya + 20 * f) for f in fractions[:10]]
                d.line(front, fill=24, width=max(2, int(a.rib_gap * 0.35)))
    for s in (-1, 1):
        d.line([(a.cx + s * 10, a.apex + 16), (a.cx + s * 0.45 * a.tw, a.apex + 8),
                (a.cx + s * 0.95 * a.tw, a.apex - 6)], fill=80, width=6, joint="curve")
    return np.asarray(layer, np.float32) / 255.0


def _consolidation(film: np.ndarray, a: _Anatomy, p: dict, fixed: np.random.Generator) -> np.ndarray:
    """A dense, slightly patchy airspace opacity in the lobe's zone, with air bronchograms if present."""
    s = -1 if p["lobe"].startswith("right") else 1
    lung = a.lung(s)
    weight = _lobe_weight(a, p)
    opacity = weight * (0.8 + 0.2 * _smooth_noise(fixed, 24)) * lung
    if p["lobe"] == "left lower lobe":
        # Retrocardiac: the density also shows through the heart shadow.
        opacity = opacity + 0.3 * weight * a.heart
    if p["air_bronchograms"]:
        layer = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        d = ImageDraw.Draw(layer)
        ys, xs = np.nonzero(weight * lung > 0.9)
        hx, hy = a.cx + s * (a.med + 6), a.hilum
        for i in fixed.permutation(len(ys))[:4]:
            # Air-filled bronchi: dark tubes running from the hilum into the opacity.
            tx, ty = float(xs[i]), float(ys[i])
            mx, my = (hx + tx) / 2 + fixed.normal(0, 4), (hy + ty) / 2 + fixed.normal(0, 4)
            d.line([(hx, hy), (mx, my), (tx, ty)], fill=255, width=2)
        tubes = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.6)), np.float32) / 255.0
        opacity = opacity * (1 - 0.6 * tubes)
    return film + (p["soft_tissue"] + 0.16 - film) * np.clip(opacity, 0, 1)


def _effusion(film: np.ndarray, a: _Anatomy, s: int, p: dict) -> np.ndarray:
    """Dependent fluid filling the costophrenic recess, its meniscus rising along the lateral wall."""
    lateral = s * (_XX - a.cx)
    nx = np.clip((lateral - a.med) / (a.tw - a.med), 0, 1)
    recess = a.dome(s) + a.dome_height  # the lowest lateral point of the pleural space
    top = recess - p["effusion_height_px"] * (1 - p["meniscus_curve"] * (1 - nx) ** 2)
    hemithorax = (lateral > 0) & (lateral < a.wall + 3) & (_YY < recess + 4)
    fluid = np.clip((_YY - top) / 4.0, 0, 1) * hemithorax  # fluid thins out towards its upper margin
    # Fluid adds density: it hides the dome and lung but never makes the heart look lighter.
    return film + np.clip(p["soft_tissue"] + 0.15 - film, 0, None) * fluid


def _pleural_line(film: np.ndarray, a: _Anatomy, s: int, collapsed: np.ndarray) -> np.ndarray:
    """The visceral pleural line: the edge of the collapsed lung that faces the pleural air."""
    air = a.lung(s) & ~collapsed
    near_air = air.copy()
    for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
        near_air |= np.roll(air, shift, axis=axis)
    return film + 0.4 * (collapsed & near_air)


class _Anatomy:
    """Geometry of one patient's chest in image coordinates; masks are boolean arrays over the film."""

    def __init__(self, p: dict) -> None:
        self.cx = IMAGE_SIZE / 2 + p["centre_x"]
        self.tw = p["thorax_half_width"]
        self.apex = p["apex_y"]
        self.dome_r, self.dome_l = p["dome_right_y"], p["dome_left_y"]
        self.dome_height = p["dome_height"]
        self.med = p["mediastinum_half_width"]
        self.first_rib, self.rib_gap, self.ribs = p["first_rib_y"], p["rib_gap"], p["ribs_visible"]
        self.hilum = self.apex + 0.42 * (self.dome_r - self.apex)
        self._lungs: dict[tuple[int, float], np.ndarray] = {}
        dx = np.abs(_XX - self.cx)
        self.diaphragm = self._dome_curve()
        below = _YY > self.diaphragm
        self.wall = self._wall(_YY)
        self.body = dx < np.minimum(30 + np.clip((_YY - 8) * 3.5, 0, None), self.tw + 17)  # neck, shoulders
        self.abdomen = self.body & below
        knob_y = self.apex + 0.3 * (self.dome_r - self.apex)
        aortic_knob = ((_XX - self.cx - self.med - 1) / 8) ** 2 + ((_YY - knob_y) / 9) ** 2 < 1
        self.mediastinum = ((dx < self.med) | aortic_knob) & ~below
        self.trachea = (dx < 5) & (_YY < self.hilum - 10)
        self.spine = (dx < 9) * (np.sin(_YY / self.rib_gap * 2 * np.pi) > -0.6)  # vertebral bodies
        # Heart: two half-ellipses meeting at the midline, widest just above the diaphragm; the right
        # part (image left) and the left part add up to the case's cardiothoracic ratio.
        width = p["ctr"] * 2 * self.tw
        right = p["heart_right_fraction"] * width
        half = np.where(_XX < self.cx, right, width - right)
        centre_y = self.dome_r - 0.3 * p["heart_height"]
        self.heart = (((_XX - self.cx) / half) ** 2 + ((_YY - centre_y) / p["heart_height"]) ** 2 < 1) & ~below

    def dome(self, s: int) -> float:
        return self.dome_r if s < 0 else self.dome_l

    def _wall(self, y: np.ndarray | float) -> np.ndarray:
        """Distance of the inner chest wall from the midline: narrow at the apices, widest at the bases."""
        return self.tw * (0.58 + 0.42 * np.sqrt(np.clip((y - self.apex) / (self.dome_r - self.apex), 0, 1)))

    def _dome_curve(self) -> np.ndarray:
        """Y of the diaphragm at every column: a dome over each hemithorax, deepest laterally."""
        top = np.where(_XX < self.cx, self.dome_r, self.dome_l)
        off = (np.abs(_XX - self.cx) - 0.4 * self.tw) / (0.6 * self.tw)
        # Falls steeply into the lateral costophrenic recess and gently to the cardiophrenic angle.
        return top + self.dome_height * np.clip(off, 0, None) ** 2 + 10 * np.clip(-off / 0.67, 0, 1) ** 2

    def lung(self, s: int, retract: float = 0.0) -> np.ndarray:
        """Aerated lung of one side (s=-1: patient's right, image left), shrunk by `retract` pixels
        from the chest wall and the apex (a pneumothorax)."""
        key = (s, retract)
        if key not in self._lungs:
            lateral = s * (_XX - self.cx)
            round_h = 30.0  # the apex is a half-ellipse this tall
            y_round = self.apex + retract + round_h
            wall_round = float(self._wall(y_round)) - retract
            centre, half = (wall_round + self.med) / 2, (wall_round - self.med) / 2
            top = (_YY >= y_round) | (((lateral - centre) / half) ** 2 + ((_YY - y_round) / round_h) ** 2 <= 1)
            self._lungs[key] = ((lateral > self.med) & (lateral < self.wall - retract) & top
                                & (_YY < self.diaphragm) & ~self.heart & ~self.mediastinum)
        return self._lungs[key]


def _lobe_weight(a: _Anatomy, p: dict) -> np.ndarray:
    """How strongly each pixel of the film lies in the consolidated part of the lobe, in [0, 1].

    Used by the drawer and by `opacity_size_cm`, which measures the opacity the report describes.
    """
    lobe = p["lobe"]
    s = -1 if lobe.startswith("right") else 1
    # Irregular margins, fixed per patient (a generator of its own so drawing order cannot change them).
    wobble = 0.07 * (_smooth_noise(np.random.default_rng([p["seed"], 2]), 8) - 0.5)
    depth = (_YY - a.apex) / (a.dome(s) - a.apex)  # 0 at the apex, 1 at the dome
    ny = depth + wobble
    nx = (s * (_XX - a.cx) - a.med) / (a.tw - a.med) - wobble  # 0 medially, 1 at the chest wall
    dx, dy = p["lesion_shift"]
    k = p["lesion_scale"]

    def ramp(t: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return np.clip((t - lo) / (hi - lo), 0, 1)

    if lobe == "right upper lobe":
        # The horizontal fissure gives a sharp, straight lower margin.
        return ramp(ny, 0.0, 0.15) * (depth < 0.45 + dy) * ramp(nx, -0.05, 0.12 + dx)
    if lobe == "right middle lobe":  # medial, against the right heart border
        return ramp(ny, 0.45 + dy, 0.55 + dy) * ramp(-ny, -0.97, -0.85) * ramp(-nx, -0.6 * k - dx, -0.3 * k - dx)
    if lobe == "right lower lobe":  # lateral and basal, down to the dome
        return ramp(ny, 0.5 + dy, 0.66 + dy) * ramp(nx, 0.1 + dx, 0.3 + dx)
    if lobe == "left upper lobe":  # upper and mid zones, no fissure below
        return ramp(ny, 0.0, 0.15) * ramp(-ny, -0.62 * k - dy, -0.42 * k - dy)
    return ramp(ny, 0.5 + dy, 0.68 + dy) * ramp(-nx, -0.65 * k - dx, -0.35 * k - dx)  # left lower, medial


def opacity_size_cm(p: dict, px_per_cm: float) -> tuple[int, int]:
    """Transverse and craniocaudal extent of the drawn consolidation, so the report matches the film."""
    a = _Anatomy(p)
    s = -1 if p["lobe"].startswith("right") else 1
    ys, xs = np.nonzero((_lobe_weight(a, p) > 0.5) & a.lung(s))
    return (max(1, round((xs.max() - xs.min() + 1) / px_per_cm)),
            max(1, round((ys.max() - ys.min() + 1) / px_per_cm)))


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Value noise in [0, 1] over the film; `cells` is the grid density per image width."""
    grid = rng.random((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
