"""Chinese herb monographs (domain `tcm_herb`): one case per herb of `rag/data/tcm_herbs.jsonl`.

The facts (names, category, nature, flavours, channels, actions, indications, dosage, cautions)
are data, checked against the Chinese Pharmacopoeia 2020 and Bensky's Materia Medica; this module
turns each record into a monograph document, closed questions and specimen photographs.

The drawer paints a photograph of the crude drug as dispensed: pieces of the herb's form (berries,
root slices with rings and radial lines, curled bark, flower heads, leaves with veins, fungus
cubes, mineral lumps, ...) in its colours and surface texture, scattered or piled on a tray,
paper, cloth or plate. The pieces come from a per-herb batch fixed by `case.params` (their sizes,
outlines and surface marks), so the six photographs of one herb show the same batch; the rng
passed to `draw` only changes the acquisition: which pieces, where, zoom, background, light, noise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rag.sample_corpus.base import IMAGE_SIZE, QuestionTemplate, SampleCase, photo_variant

DATA_FILE = "data/tcm_herbs.jsonl"
CHANNELS: tuple[str, ...] = ("Lung", "Large Intestine", "Stomach", "Spleen", "Heart", "Small Intestine",
                             "Bladder", "Kidney", "Pericardium", "San Jiao", "Gallbladder", "Liver")
NATURES: tuple[str, ...] = ("cold", "slightly cold", "cool", "neutral", "slightly warm", "warm", "hot")
FLAVOURS: tuple[str, ...] = ("sweet", "bitter", "acrid", "sour", "salty", "bland", "astringent")
FORMS: tuple[str, ...] = ("berry", "root_slice", "root", "bark", "seed", "flower", "leaf", "twig", "rhizome",
                          "fungus", "peel", "fruit", "mineral", "shell", "resin", "gelatin", "hook_stem",
                          "kernel", "stamen")
TEXTURES: tuple[str, ...] = ("smooth", "glossy", "wrinkled", "fibrous", "powdery", "granular", "ridged", "spiny",
                             "hairy", "woolly", "waxy", "oily", "layered", "crystalline", "filamentous",
                             "porous", "rough", "marbled", "rubbery", "sectioned")
NAME_FIELDS: tuple[str, ...] = ("zh", "pinyin", "latin", "en")
YES_NO_PER_HERB = 4  # of the thirteen questions per herb; answers are balanced over the domain

# Pieces in a herb's batch; one photograph shows a subset of at most MAX_PIECES of them.
BATCH_SIZE = 128
MAX_PIECES = 110
# Zoom range of the photographs: pixels per millimetre of crude drug (before the clip to 7-100 px).
PIXELS_PER_MM = (2.0, 3.0)
# Temperature sign of a nature: used so that a "no" distractor taken from another herb comes from the
# opposite side (a cold herb's caution never applies to a hot one, and the reverse).
_NATURE_SIGN = {"cold": -1, "slightly cold": -1, "cool": -1, "neutral": 0, "slightly warm": 1, "warm": 1, "hot": 1}
_STOPWORDS = frozenset("and the for with from when use used not are its all into can may has have should be "
                       "caution patterns pattern".split())
# Words that say the same thing in different phrasings: a distractor using either is as good as the
# other for deciding whether it overlaps a herb's own actions or cautions.
_SYNONYMS = {"weakness": "deficiency", "weak": "deficiency", "deficient": "deficiency", "diarrhoea": "stools",
             "loose": "stools", "restrain": "astringe", "secure": "astringe", "bind": "astringe",
             "stabilise": "astringe", "augment": "tonify", "benefit": "tonify", "strengthen": "tonify",
             "nourish": "tonify", "enrich": "tonify", "poisoning": "toxic", "toxicity": "toxic"}


def load_herbs() -> list[dict[str, Any]]:
    """The herb records shipped as package data of `rag`, in file order."""
    return [json.loads(line) for line in _herb_lines()]


@lru_cache(maxsize=1)
def _herb_lines() -> tuple[str, ...]:
    text = resources.files("rag").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------------------------------
# Documents and questions
# --------------------------------------------------------------------------------------------------

def _clause(phrase: str) -> str:
    """A list item as a clause inside a sentence: lower-case first letter (names keep their case)."""
    return phrase[0].lower() + phrase[1:]


def monograph_text(herb: dict[str, Any]) -> str:
    """The English monograph paragraph of one herb: every fact its questions ask about."""
    def items(values: list[str]) -> str:
        return "; ".join(_clause(v) for v in values)

    return (
        f"{herb['pinyin']} ({herb['zh']}), pharmaceutical name {herb['latin']}, English name "
        f"{herb['en']}, belongs to the category {herb['category']}. "
        f"Nature: {herb['nature']}. Flavour: {', '.join(herb['flavours'])}. "
        f"Channels entered: {', '.join(herb['channels'])}. "
        f"Actions: {items(herb['actions'])}. "
        f"Indications: {items(herb['indications'])}. "
        f"Usual dosage: {herb['dosage']} in decoction. "
        f"Cautions: {items(herb['cautions'])}. "
        f"The crude drug as dispensed: {herb['appearance']['description']}."
    )


def _tokens(text: str) -> set[str]:
    words = (w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3 and w not in _STOPWORDS)
    return {_SYNONYMS.get(w, w) for w in words}


def _shares_words(candidate: str, own: list[str]) -> bool:
    words = _tokens(candidate)
    return any(words & _tokens(phrase) for phrase in own)


def _opposite_side(herb: dict[str, Any], other: dict[str, Any]) -> bool:
    return _NATURE_SIGN[herb["nature"]] * _NATURE_SIGN[other["nature"]] < 0


def _multiple_choice(question: str, answer: str, pool: list[str], rng: np.random.Generator, *,
                     uses_image: bool, topic: str) -> QuestionTemplate:
    """Four options: the answer at a random position and three distractors drawn from `pool`."""
    candidates = sorted(set(pool) - {answer})
    if len(candidates) < 3:
        raise ValueError(f"too few distractors for {question!r}")
    picks = rng.choice(len(candidates), size=3, replace=False)
    options = [candidates[i] for i in picks]
    options.insert(int(rng.integers(4)), answer)
    return QuestionTemplate(question, answer, options, uses_image, "multiple_choice", topic)


def _yes_no(question: str, truth: bool, *, uses_image: bool, topic: str) -> QuestionTemplate:
    return QuestionTemplate(question, "yes" if truth else "no", ["yes", "no"], uses_image, "yes_no", topic)


def _set_pool(own: list[str], lists: list[list[str]], prefer: Callable[[list[str]], bool]) -> list[str]:
    """Distractor strings for a list-valued fact (channels, flavours), one per distinct set.

    Lists equal to `own` as sets are dropped (order does not change the fact); those `prefer` accepts
    are used when there are enough of them, so the distractors stay plausible.
    """
    seen = {frozenset(own)}
    everything, preferred = [], []
    for values in lists:
        key = frozenset(values)
        if key in seen:
            continue
        seen.add(key)
        everything.append(", ".join(values))
        if prefer(values):
            preferred.append(", ".join(values))
    return preferred if len(preferred) >= 3 else everything


def _caution_pool(herb: dict[str, Any], herbs: list[dict[str, Any]]) -> list[str]:
    """Cautions of other herbs that certainly do not apply to `herb`.

    Only a herb's leading (most specific) caution is used. It must come from a herb of the opposite
    temperature, or name a toxicity or an incompatibility; it may not mention pregnancy (cautioned
    for many herbs), `herb`'s own names, or share content words with any of `herb`'s cautions.
    """
    pool = []
    for other in herbs:
        if other["key"] == herb["key"]:
            continue
        caution = other["cautions"][0]
        specific = "toxic" in caution.lower() or "combined with" in caution
        if not (specific or _opposite_side(herb, other)) or "pregnan" in caution.lower():
            continue
        if herb["pinyin"] in caution or _shares_words(caution, herb["cautions"]):
            continue
        pool.append(caution)
    return pool


def _action_pool(herb: dict[str, Any], herbs: list[dict[str, Any]]) -> list[str]:
    """Leading actions of herbs of another category (and, unless neutral, opposite temperature)
    that share no content word with any of `herb`'s actions."""
    pool = []
    for other in herbs:
        if other["category"] == herb["category"]:
            continue
        if _NATURE_SIGN[herb["nature"]] != 0 and not _opposite_side(herb, other):
            continue
        action = other["actions"][0]
        if not _shares_words(action, herb["actions"]):
            pool.append(action)
    return pool


def _category_family(category: str) -> str:
    """'Tonify Qi' and 'Tonify Yang' are one family; a yes/no 'no' must come from another family."""
    return category.split()[0]


def herb_questions(herb: dict[str, Any], herbs: list[dict[str, Any]], rng: np.random.Generator,
                   truths: list[bool]) -> list[QuestionTemplate]:
    """Thirteen questions: six about "the herb in this image", seven naming it by a random alias.

    `truths` gives the answers of the YES_NO_PER_HERB yes/no questions, so that the caller can
    balance yes and no over the whole domain.
    """
    def alias() -> str:
        return herb[NAME_FIELDS[int(rng.integers(len(NAME_FIELDS)))]]

    def channel_for(truth: bool) -> str:
        choices = herb["channels"] if truth else [c for c in CHANNELS if c not in herb["channels"]]
        return choices[int(rng.integers(len(choices)))]

    others = [h for h in herbs if h["key"] != herb["key"]]
    own_channels = set(herb["channels"])
    channels = ", ".join(herb["channels"])
    channel_pool = _set_pool(herb["channels"], [h["channels"] for h in others],
                             lambda c: bool(own_channels & set(c)) and abs(len(c) - len(own_channels)) <= 1)
    flavour_pool = _set_pool(herb["flavours"], [h["flavours"] for h in others],
                             lambda f: abs(len(f) - len(herb["flavours"])) <= 1)
    dosage_pool = [h["dosage"] for h in others]
    category_pool = [h["category"] for h in others]
    same_form = [h["pinyin"] for h in others if h["appearance"]["form"] == herb["appearance"]["form"]]
    names_pool = same_form if len(same_form) >= 3 else [h["pinyin"] for h in others]
    image = "the herb in this image"

    questions = [
        _multiple_choice("Which herb is shown in this image?", herb["pinyin"], names_pool, rng,
                         uses_image=True, topic="identification"),
        _multiple_choice(f"Which channels does {image} enter?", channels, channel_pool, rng,
                         uses_image=True, topic="channels"),
        _multiple_choice(f"What is the nature of {image}?", herb["nature"], list(NATURES), rng,
                         uses_image=True, topic="nature"),
        _multiple_choice(f"Which materia medica category does {image} belong to?", herb["category"],
                         category_pool, rng, uses_image=True, topic="category"),
        _multiple_choice(f"What is the usual decoction dosage of {image}?", herb["dosage"], dosage_pool, rng,
                         uses_image=True, topic="dosage"),
    ]
    channel = channel_for(truths[0])
    questions.append(_yes_no(f"Does {image} enter the {channel} channel?", truths[0], uses_image=True,
                             topic="channels"))

    questions += [
        _multiple_choice(f"Which channels does {alias()} enter?", channels, channel_pool, rng,
                         uses_image=False, topic="channels"),
        _multiple_choice(f"What is the usual dosage of {alias()} in decoction?", herb["dosage"], dosage_pool,
                         rng, uses_image=False, topic="dosage"),
        _multiple_choice(f"Which flavours does {alias()} have?", ", ".join(herb["flavours"]), flavour_pool, rng,
                         uses_image=False, topic="flavours"),
        _multiple_choice(f"Which caution is given in the monograph of {alias()}?", herb["cautions"][0],
                         _caution_pool(herb, herbs), rng, uses_image=False, topic="cautions"),
    ]
    if truths[1]:
        action = herb["actions"][int(rng.integers(len(herb["actions"])))]
    else:
        pool = sorted(set(_action_pool(herb, herbs)))
        action = pool[int(rng.integers(len(pool)))]
    questions.append(_yes_no(f"Is {alias()} used to {_clause(action)}?", truths[1], uses_image=False,
                             topic="actions"))
    if truths[2]:
        category = herb["category"]
    else:
        families = sorted({h["category"] for h in others
                           if _category_family(h["category"]) != _category_family(herb["category"])})
        category = families[int(rng.integers(len(families)))]
    questions.append(_yes_no(f"Does {alias()} belong to the category {category}?", truths[2],
                             uses_image=False, topic="category"))
    channel = channel_for(truths[3])
    questions.append(_yes_no(f"Does {alias()} enter the {channel} channel?", truths[3], uses_image=False,
                             topic="channels"))
    return questions


# --------------------------------------------------------------------------------------------------
# Drawing: pieces are lists of primitives in a local frame (x along the piece, y across it)
# --------------------------------------------------------------------------------------------------

RGB = tuple[int, int, int]


@dataclass
class _Prim:
    kind: str  # "poly", "line" or "dots"
    pts: np.ndarray  # (n, 2) local coordinates
    colour: RGB
    width: float = 1.0  # line width, or dot radius
    outline: RGB | None = None
    body: bool = False  # casts a shadow


def _shade(colour: Any, factor: float) -> RGB:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)  # type: ignore[return-value]


def _mix(a: Any, b: Any, t: float) -> RGB:
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


def _ellipse(length: float, width: float, prng: np.random.Generator, irregular: float, n: int = 22,
             scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """An ellipse whose radius wobbles by low harmonics: the outline of a natural piece."""
    t, unit = _circle(n)
    phases = prng.uniform(0, 2 * np.pi, 3)
    wobble = 1 + irregular * 1.5 * (np.cos(2 * t + phases[0]) / 2 + np.cos(3 * t + phases[1]) / 3
                                    + np.cos(5 * t + phases[2]) / 5)
    radii = np.array([0.5 * length * scale, 0.5 * width * scale])
    return unit * radii * wobble[:, None] + np.asarray(offset)


def _inside_points(length: float, width: float, count: int, prng: np.random.Generator,
                   fill: float = 0.8) -> np.ndarray:
    """Uniform points inside the central ellipse of a piece (for dots, pores, specks)."""
    r = np.sqrt(prng.uniform(0, 1, count)) * fill
    t = prng.uniform(0, 2 * np.pi, count)
    return np.stack([0.5 * length * r * np.cos(t), 0.5 * width * r * np.sin(t)], axis=1)


def _curve(p0: tuple[float, float], p1: tuple[float, float], bend: float, n: int = 5) -> np.ndarray:
    """A gently bent segment from p0 to p1 (bend in units of its length)."""
    s, lift = _arc_steps(n)
    a = np.asarray(p0, dtype=float)
    d = np.asarray(p1, dtype=float) - a
    return a + s * d + (bend * lift) * np.array([-d[1], d[0]])


def _count(base: float, length: float, width: float, prng: np.random.Generator) -> int:
    """How many marks a texture puts on a piece: proportional to its area, at least one."""
    return max(1, int(base * length * width / 400.0 * prng.uniform(0.7, 1.3)))


def _texture(texture: str, length: float, width: float, colour: RGB, secondary: RGB,
             prng: np.random.Generator) -> list[_Prim]:
    """Surface marks shared by all forms; forms add their own structure (rings, veins, nodes)."""
    if length < 9:  # a seed a few pixels long shows no surface detail
        return []
    prims: list[_Prim] = []
    if texture in ("glossy", "waxy"):
        bright = 0.55 if texture == "glossy" else 0.3
        prims.append(_Prim("poly", _ellipse(length * 0.35, width * 0.22, prng, 0.05, 12,
                                            offset=(-0.12 * length, -0.18 * width)), _mix(colour, WHITE, bright)))
    elif texture == "wrinkled":
        for _ in range(_count(3, length, width, prng) + 2):
            x0, y0 = _inside_points(length, width, 1, prng, 0.7)[0]
            dx = prng.uniform(0.15, 0.35) * length
            prims.append(_Prim("line", _curve((x0 - dx / 2, y0), (x0 + dx / 2, y0 + prng.normal(0, 0.08) * width),
                                              prng.uniform(-0.3, 0.3)), _shade(colour, 0.62)))
    elif texture in ("fibrous", "ridged"):
        lines = int(prng.integers(3, 7)) if texture == "ridged" else int(prng.integers(5, 10))
        for y in np.linspace(-0.35, 0.35, lines) * width:
            span = 0.5 * length * np.sqrt(max(0.0, 1 - (2 * y / width) ** 2)) * 0.85
            prims.append(_Prim("line", _curve((-span, y), (span, y + prng.normal(0, 0.03) * width),
                                              prng.uniform(-0.04, 0.04)),
                               _shade(colour, 0.72 if texture == "ridged" else 0.85)))
    elif texture in ("powdery", "crystalline"):
        n = _count(10 if texture == "powdery" else 3, length, width, prng)
        tone = _mix(colour, WHITE, 0.6) if texture == "powdery" else (255, 255, 250)
        prims.append(_Prim("dots", _inside_points(length, width, n, prng, 0.85), tone, 0.6))
    elif texture in ("granular", "spiny"):
        n = _count(8 if texture == "granular" else 16, length, width, prng)
        prims.append(_Prim("dots", _inside_points(length, width, n, prng, 0.85), _shade(colour, 0.65), 0.8))
        if texture == "spiny":
            prims.append(_Prim("dots", _inside_points(length, width, n // 2, prng, 0.85),
                               _mix(colour, WHITE, 0.3), 0.6))
    elif texture == "oily":  # oil glands and cavities show darker than the tissue around them
        n = _count(2.5, length, width, prng) + 2
        oil = secondary if _luma(secondary) < _luma(colour) else _shade(colour, 0.6)
        prims.append(_Prim("dots", _inside_points(length, width, n, prng, 0.75), oil, max(0.7, length / 60)))
    elif texture == "porous":
        n = _count(2.5, length, width, prng) + 3
        prims.append(_Prim("dots", _inside_points(length, width, n, prng, 0.75), _shade(colour, 0.72),
                           max(0.7, length / 45)))
    elif texture == "rough":
        for _ in range(_count(2, length, width, prng) + 1):
            x, y = _inside_points(length, width, 1, prng, 0.7)[0]
            prims.append(_Prim("poly", _ellipse(length * 0.18, width * 0.25, prng, 0.3, 8, offset=(x, y)),
                               _mix(colour, secondary, 0.6)))
    elif texture == "marbled":
        for _ in range(int(prng.integers(4, 8))):
            y0 = prng.uniform(-0.35, 0.35) * width
            xs = np.linspace(-0.4, 0.4, 7) * length
            ys = y0 + np.sin(xs / length * prng.uniform(6, 12) + prng.uniform(0, 6)) * 0.08 * width
            prims.append(_Prim("line", np.stack([xs, ys], axis=1), secondary, max(1.0, width / 25)))
    elif texture == "hairy":
        t = prng.uniform(0, 2 * np.pi, _count(6, length, width, prng) + 4)
        base = np.stack([0.5 * length * np.cos(t), 0.5 * width * np.sin(t)], axis=1)
        reach = 0.05 * min(length, width)
        for (x, y), a in zip(base, t):
            tip = (x + np.cos(a) * reach, y + np.sin(a) * reach)
            prims.append(_Prim("line", np.array([[x, y], tip]), _mix(colour, WHITE, 0.35)))
    return prims


def _rounded(body: np.ndarray, colour: RGB, length: float, width: float) -> list[_Prim]:
    """A solid piece: a dark rim around its lit body, offset to one side so it reads as rounded."""
    rim = _shade(colour, 0.62)
    lit = body * 0.86 + np.array([-0.04 * length, -0.06 * width])
    return [_Prim("poly", body, rim, outline=_shade(colour, 0.45), body=True), _Prim("poly", lit, colour)]


def _piece_berry(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                 prng: np.random.Generator) -> list[_Prim]:
    prims = _rounded(_ellipse(L, W, prng, irr + 0.05), c, L, W)
    prims += _texture(tex, L, W, c, s, prng)
    prims.append(_Prim("poly", _ellipse(L * 0.18, W * 0.12, prng, 0.05, 10, offset=(-0.15 * L, -0.2 * W)),
                       _mix(c, WHITE, 0.5)))
    prims.append(_Prim("dots", np.array([[0.46 * L, 0.0]]), s, max(0.7, W * 0.1)))
    return prims


def _piece_fruit(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                 prng: np.random.Generator) -> list[_Prim]:
    body = _ellipse(L, W, prng, irr + 0.05 + 0.3 * curl + (0.06 if tex == "spiny" else 0.0),
                    n=34 if tex in ("spiny", "wrinkled") else 24)
    if tex == "sectioned":  # a slice or half: skin rim around the cut flesh, seeds and segments
        prims = [_Prim("poly", body, c, outline=_shade(c, 0.5), body=True),
                 _Prim("poly", body * 0.8, s, outline=_shade(s, 0.8))]
        for a in prng.uniform(0, 2 * np.pi, int(prng.integers(4, 8))):
            prims.append(_Prim("line", np.array([[0, 0], [np.cos(a) * 0.3 * L, np.sin(a) * 0.3 * W]]),
                               _shade(s, 0.7)))
        seeds = _inside_points(L, W, int(prng.integers(2, 5)), prng, 0.45)
        prims.append(_Prim("dots", seeds, _shade(s, 0.85), max(1.0, L / 14)))
        prims.append(_Prim("dots", np.array([[0.0, 0.0]]), _shade(c, 0.7), max(1.0, L / 16)))
        return prims
    prims = _rounded(body, c, L, W)
    if tex == "ridged":
        for y in np.linspace(-0.3, 0.3, 4) * W:
            prims.append(_Prim("line", _curve((-0.42 * L, y * 0.4), (0.42 * L, y * 0.4), y / W * 0.5), _shade(c, 0.65)))
    prims += _texture(tex, L, W, c, s, prng)
    if L >= 9:
        prims.append(_Prim("poly", _ellipse(L * 0.16, W * 0.1, prng, 0.05, 10, offset=(-0.15 * L, -0.2 * W)),
                           _mix(c, WHITE, 0.35)))
    prims.append(_Prim("dots", np.array([[0.47 * L, 0.0]]), s, max(0.7, W * 0.08)))
    return prims


def _piece_seed(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[_Prim]:
    body = _ellipse(L, W, prng, irr * 0.5 + 0.03, n=16 if L < 9 else 22)
    if tex == "marbled":  # a flat slice of the seed: no rounded shading
        return [_Prim("poly", body, c, outline=_shade(s, 0.8), body=True)] + _texture(tex, L, W, c, s, prng)
    prims = _rounded(body, c, L, W)
    if L >= 9:
        prims.append(_Prim("line", _curve((-0.35 * L, 0.08 * W), (0.35 * L, 0.08 * W), 0.02), s, max(1.0, W * 0.12)))
    prims += _texture(tex, L, W, c, s, prng)
    return prims


def _piece_kernel(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                  prng: np.random.Generator) -> list[_Prim]:
    t = np.linspace(0, 2 * np.pi, 26, endpoint=False)
    taper = np.sqrt((1 - np.cos(t)) / 2) ** 0.6  # width shrinks to a point at +x
    body = np.stack([0.5 * L * np.cos(t), 0.5 * W * np.sin(t) * taper * 1.25], axis=1)
    body *= 1 + irr * 0.3 * np.cos(3 * t + prng.uniform(0, 6))[:, None]
    prims = _rounded(body, c, L, W)
    for k in np.linspace(-0.5, 0.5, 5):  # veins fanning from the rounded base
        prims.append(_Prim("line", _curve((-0.42 * L, 0.0), (0.3 * L, k * 0.6 * W), k * 0.2), _shade(s, 0.95)))
    return prims + _texture(tex, L, W, c, s, prng)


def _piece_root_slice(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                      prng: np.random.Generator) -> list[_Prim]:
    """A transverse slice: bark ring, cut face, cambium ring, radial rays and a centre."""
    outer = _ellipse(L, W, prng, irr + 0.04, n=28)
    bark = 0.82 + prng.uniform(0, 0.08)
    prims = [_Prim("poly", outer, s, outline=_shade(s, 0.6), body=True), _Prim("poly", outer * bark, c)]
    ring = prng.uniform(0.45, 0.65)
    prims.append(_Prim("line", np.vstack([outer * ring, outer[:1] * ring]), _mix(c, s, 0.7), max(1.0, L / 45)))
    rays = int(prng.integers(16, 26)) if tex == "fibrous" else int(prng.integers(5, 9))
    ray_colour = _shade(_mix(c, s, 0.5), 0.8 if tex == "fibrous" else 0.92)
    for a in np.linspace(0, 2 * np.pi, rays, endpoint=False) + prng.uniform(0, 1):
        direction = np.array([np.cos(a) * 0.5 * L, np.sin(a) * 0.5 * W])
        prims.append(_Prim("line", np.array([direction * 0.08, direction * bark * 0.95]), ray_colour))
    prims.append(_Prim("dots", np.array([[0.0, 0.0]]), _mix(c, s, 0.6), max(0.8, L / 30)))
    return prims + _texture(tex, L * bark, W * bark, c, s, prng)


def _piece_twig(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[_Prim]:
    if L / W < 2:  # a thick transverse slice: bark, wood and a squarish pith
        outer = _ellipse(L, W, prng, irr * 0.5 + 0.03)
        prims = [_Prim("poly", outer, c, outline=_shade(c, 0.6), body=True), _Prim("poly", outer * 0.78, s)]
        pith = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.09 * np.array([L, W])
        prims.append(_Prim("poly", pith, _mix(s, c, 0.6)))
        for a in np.linspace(0, 2 * np.pi, 10, endpoint=False):
            prims.append(_Prim("line", np.array([[np.cos(a) * 0.1 * L, np.sin(a) * 0.1 * W],
                                                 [np.cos(a) * 0.36 * L, np.sin(a) * 0.36 * W]]), _shade(s, 0.88)))
        return prims
    axis = _curve((-L / 2, 0.0), (L / 2, prng.normal(0, 0.04) * L), prng.uniform(-0.06, 0.06), n=6)
    prims = [_Prim("line", axis, c, W, body=True)]
    if W >= 4:
        prims.append(_Prim("line", axis + np.array([0, -0.22 * W]), _mix(c, WHITE, 0.25), max(1.0, W * 0.2)))
    if tex == "ridged" and W >= 3:
        prims.append(_Prim("line", axis + np.array([0, 0.15 * W]), _shade(c, 0.7)))
    for x in np.arange(-L / 2 + prng.uniform(0.1, 0.3) * L, L / 2, prng.uniform(0.25, 0.4) * L):
        y = np.interp(x, axis[:, 0], axis[:, 1])
        prims.append(_Prim("line", np.array([[x, y - 0.6 * W], [x, y + 0.6 * W]]), s, max(1.0, W * 0.3)))
    prims.append(_Prim("dots", axis[[0, -1]], _mix(s, WHITE, 0.2), max(0.6, W * 0.3)))
    if tex == "hairy":  # slender flower spikes on some segments
        if prng.random() < 0.5:
            spike = _ellipse(L * 0.45, W * 1.8, prng, 0.1, 14, offset=(0.3 * L, axis[-1, 1]))
            prims.append(_Prim("poly", spike, _mix(c, s, 0.4), outline=_shade(c, 0.6), body=True))
        prims += _texture("hairy", L, W * 1.4, c, s, prng)
    return prims


def _piece_root(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[_Prim]:
    if L / W > 10:  # tangled fine rootlets from a small knotty rhizome
        prims = [_Prim("poly", _ellipse(L * 0.2, L * 0.1, prng, 0.2, 12), _shade(c, 0.8), body=True)]
        for _ in range(int(prng.integers(4, 9))):
            a = prng.uniform(-1.2, 1.2)
            end = (np.cos(a) * L * prng.uniform(0.5, 0.9), np.sin(a) * L * 0.5)
            prims.append(_Prim("line", _curve((0.0, 0.0), end, prng.uniform(-0.3, 0.3), n=7),
                               _mix(c, s, prng.uniform(0, 0.6)), max(1.0, W), body=True))
        return prims
    t = np.linspace(-0.5, 0.5, 14)
    spindle = L / W < 4  # tuberous roots taper at both ends; root segments are cut square
    profile = np.sqrt(np.clip(1 - (2 * t) ** 2, 0.02, 1)) if spindle else np.ones_like(t) - 0.1 * np.abs(t)
    profile = profile * (1 + irr * 0.5 * np.sin(t * prng.uniform(6, 14) + prng.uniform(0, 6)))
    bend = prng.uniform(-0.08, 0.08) * L * np.cos(np.pi * t)
    upper = np.stack([t * L, bend - profile * W / 2], axis=1)
    lower = np.stack([t * L, bend + profile * W / 2], axis=1)[::-1]
    body = np.vstack([upper, lower])
    prims = _rounded(body, c, L, W)
    if tex == "rough":  # knobby, tumour-like bumps on the surface
        for x in prng.uniform(-0.35, 0.35, int(prng.integers(3, 6))) * L:
            y = np.interp(x, t * L, bend) + prng.choice([-1, 1]) * 0.32 * W
            bump = _ellipse(W * 0.35, W * 0.3, prng, 0.1, 10, offset=(x, y))
            prims += [_Prim("poly", bump, _shade(c, 0.75), outline=_shade(c, 0.5), body=True),
                      _Prim("poly", bump * 0.7 + 0.3 * np.array([x, y]) - [0.02 * L, 0.03 * W], c)]
    if not spindle:
        for end in (0, -1):
            cut = _ellipse(W * 0.3, W * 0.9, prng, 0.05, 10, offset=(t[end] * L * 0.96, bend[end]))
            prims.append(_Prim("poly", cut, s))
    if tex == "wrinkled":  # transverse wrinkles across the root
        for x in np.sort(prng.uniform(-0.4, 0.4, int(prng.integers(4, 9)))) * L:
            y = np.interp(x, t * L, bend)
            prims.append(_Prim("line", _curve((x, y - 0.4 * W), (x + prng.normal(0, 0.03) * L, y + 0.4 * W), 0.1),
                               _shade(c, 0.6)))
        return prims
    return prims + _texture(tex, L, W, c, s, prng)


def _piece_rhizome(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                   prng: np.random.Generator) -> list[_Prim]:
    """Knobby: a chain of overlapping lobes along a bent axis, with ring nodes."""
    lobes = 1 if L / W < 1.4 else int(np.clip(round(L / W * prng.uniform(0.9, 1.4)), 2, 6))
    xs = np.linspace(-0.5, 0.5, lobes + 2)[1:-1] * L if lobes > 1 else np.zeros(1)
    ys = prng.normal(0, 0.18, lobes) * W
    sizes = [(L / lobes * prng.uniform(1.3, 1.8) if lobes > 1 else L, W * prng.uniform(0.75, 1.1)) for _ in xs]
    shapes = [_ellipse(a, b, prng, irr + 0.08, 16, offset=(x, y)) for (a, b), x, y in zip(sizes, xs, ys)]
    prims = [_Prim("poly", sh, _shade(c, 0.62), outline=_shade(c, 0.45), body=True) for sh in shapes]
    prims += [_Prim("poly", sh * 0.88 + np.array([-0.03 * L, -0.05 * W]) + 0.12 * np.array([x, y]), c)
              for sh, x, y in zip(shapes, xs, ys)]
    if tex in ("ridged", "hairy") or lobes > 1:
        for (a, b), x, y in zip(sizes, xs, ys):
            for dx in np.linspace(-0.3, 0.3, 3 if tex in ("ridged", "hairy") else 1) * a:
                prims.append(_Prim("line", _curve((x + dx, y - 0.4 * b), (x + dx, y + 0.4 * b), 0.15), s))
    if prng.random() < 0.35:  # a broken or cut end shows the inside
        cut = _ellipse(W * 0.35, W * 0.6, prng, 0.1, 12, offset=(xs[-1] + sizes[-1][0] * 0.3, ys[-1]))
        prims.append(_Prim("poly", cut, s))
    return prims + _texture(tex, L * 0.9, W * 0.9, c, s, prng)


def _piece_bark(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[_Prim]:
    t = np.linspace(-0.5, 0.5, 10)
    top = np.stack([t * L, -W / 2 + prng.normal(0, 0.05, t.size) * W], axis=1)
    bottom = np.stack([t[::-1] * L, W / 2 + prng.normal(0, 0.05, t.size) * W], axis=1)
    body = np.vstack([top, bottom])
    body[:, 0] += np.where(np.abs(body[:, 0]) > 0.45 * L, prng.normal(0, 0.03 * L, len(body)), 0)  # broken ends
    if curl >= 0.5:  # a quill: rolled edges catch light, the hollow between them is dark
        prims = [_Prim("poly", body, s, outline=_shade(s, 0.55), body=True)]
        prims.append(_Prim("poly", body * np.array([0.98, 0.62]), _shade(c, 0.6)))
        prims.append(_Prim("line", np.stack([t * L * 0.95, np.full_like(t, -0.34 * W)], axis=1), _mix(c, WHITE, 0.15),
                           max(1.0, W * 0.12)))
        prims.append(_Prim("line", np.stack([t * L * 0.95, np.full_like(t, 0.02 * W)], axis=1), _shade(c, 0.4),
                           max(1.0, W * 0.14)))
        prims.append(_Prim("line", np.stack([t * L * 0.95, np.full_like(t, 0.3 * W)], axis=1), c, max(1.0, W * 0.14)))
    else:
        prims = [_Prim("poly", body, c, outline=_shade(s, 0.8), body=True)]
        prims.append(_Prim("line", top * np.array([1.0, 0.92]), s, max(1.0, W * 0.1)))
    if tex == "rubbery":  # silvery rubber threads across a break
        for k in range(int(prng.integers(3, 7))):
            y = (k / 6 - 0.4) * W
            thread = _curve((0.42 * L, y), (0.56 * L, y + prng.normal(0, 0.1) * W), 0.2)
            prims.append(_Prim("line", thread, (236, 236, 230)))
        return prims
    return prims + _texture(tex, L, W * 0.8, c, s, prng)


def _piece_peel(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[_Prim]:
    body = _ellipse(L, W, prng, irr + 0.3, n=30)
    body[:, 1] += 0.15 * W * np.sin(body[:, 0] / L * 6 + prng.uniform(0, 6))  # twisted, torn pieces
    prims = [_Prim("poly", body, c, outline=_shade(c, 0.55), body=True)]
    half = body[body[:, 1] > np.median(body[:, 1])]
    if len(half) >= 3 and prng.random() < 0.4 + 0.5 * curl:  # the curled edge shows the pale inner side
        inner = np.vstack([half, half[::-1] * np.array([0.95, 0.6])])
        prims.append(_Prim("poly", inner, s, outline=_shade(s, 0.75)))
    return prims + _texture(tex, L, W * 0.7, c, s, prng)


def _piece_leaf(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                prng: np.random.Generator) -> list[_Prim]:
    if tex == "woolly":  # a soft tuft: many fine curly hairs around a small core
        prims = [_Prim("poly", _ellipse(L * 0.5, W * 0.5, prng, 0.2, 14), _shade(c, 0.9), body=True)]
        for a in prng.uniform(0, 2 * np.pi, 26):
            r = prng.uniform(0.25, 0.55) * L
            prims.append(_Prim("line", _curve((0.0, 0.0), (np.cos(a) * r, np.sin(a) * r), prng.uniform(-0.4, 0.4), n=4),
                               _mix(c, WHITE if prng.random() < 0.5 else s, prng.uniform(0.1, 0.5))))
        return prims
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    taper = 1 - 0.45 * np.clip(np.cos(t), 0, 1) ** 3  # narrows towards the tip at +x
    teeth = 1 + (0.07 if tex == "spiny" else 0.04) * (np.arange(t.size) % 2)  # serrated margin
    crumple = 1 + (0.06 + 0.18 * curl) * np.sin(t * 3 + prng.uniform(0, 6)) * prng.uniform(0.5, 1)
    r = taper * teeth * crumple
    body = np.stack([0.5 * L * np.cos(t) * r, 0.5 * W * np.sin(t) * r], axis=1)
    prims = [_Prim("poly", body, c, outline=_shade(c, 0.6), body=True)]
    if prng.random() < curl:  # part of the crumpled leaf is turned over and shows its underside
        under = body[body[:, 1] > 0]
        if len(under) >= 3:
            prims.append(_Prim("poly", np.vstack([under, [[under[-1, 0], 0.0], [under[0, 0], 0.0]]]), _mix(c, s, 0.7)))
    vein = _mix(c, s, 0.5)
    prims.append(_Prim("line", np.array([[-0.55 * L, 0.0], [0.45 * L, 0.0]]), vein, max(1.0, W / 25)))
    for x in np.linspace(-0.3, 0.3, int(prng.integers(3, 6))) * L:
        for side in (-1, 1):
            prims.append(_Prim("line", np.array([[x, 0.0], [x + 0.15 * L, side * 0.32 * W]]), vein))
    if tex not in ("wrinkled", "spiny"):  # crumpling and spiny teeth are already in the outline
        prims += _texture(tex, L, W, c, s, prng)
    return prims


def _piece_flower(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                  prng: np.random.Generator) -> list[_Prim]:
    if tex == "filamentous":  # a tangle of slender florets
        prims = []
        for _ in range(int(prng.integers(10, 18))):
            a = prng.uniform(0, 2 * np.pi)
            start = prng.normal(0, 0.1, 2) * L
            end = start + np.array([np.cos(a), np.sin(a)]) * L * prng.uniform(0.3, 0.55)
            colour = s if prng.random() < 0.2 else _shade(c, prng.uniform(0.8, 1.1))
            prims.append(_Prim("line", _curve(tuple(start), tuple(end), prng.uniform(-0.3, 0.3)), colour,
                               max(1.0, W), body=True))
        return prims
    if L / W >= 3:  # a club-shaped bud, thicker at the tip
        t = np.linspace(-0.5, 0.5, 12)
        half = W / 2 * (0.35 + 0.65 * (t + 0.5) ** 1.5)
        bend = prng.uniform(-0.1, 0.1) * L * (t + 0.5) ** 2
        body = np.vstack([np.stack([t * L, bend - half], axis=1), np.stack([t * L, bend + half], axis=1)[::-1]])
        prims = [_Prim("poly", body, c, outline=_shade(c, 0.65), body=True)]
        prims.append(_Prim("line", np.stack([t[:5] * L, bend[:5]], axis=1), s, max(1.0, W * 0.3)))
        return prims + _texture(tex, L, W * 0.6, c, s, prng)
    # a flower head: rays of petals round a disc
    petals = int(prng.integers(16, 26))
    prims = [_Prim("poly", _ellipse(L, W, prng, irr + 0.1, 20) * 0.6, _shade(c, 0.8), body=True)]
    for k, a in enumerate(np.linspace(0, 2 * np.pi, petals, endpoint=False) + prng.uniform(0, 1)):
        reach = prng.uniform(0.7, 1.0) * 0.5 * L
        centre = np.array([np.cos(a), np.sin(a)]) * reach * 0.55
        petal = _ellipse(reach * 0.95, reach * 0.28, prng, 0.05, 10)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        shade = 0.9 if k % 2 else 1.0
        prims.append(_Prim("poly", petal @ rot.T + centre, _shade(c, shade), outline=_shade(c, 0.72)))
    prims.append(_Prim("poly", _ellipse(L * 0.34, W * 0.34, prng, 0.05, 14), s, outline=_shade(s, 0.7)))
    prims.append(_Prim("dots", _inside_points(L * 0.3, W * 0.3, 8, prng), _shade(s, 0.75), 0.7))
    return prims


def _piece_fungus(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                  prng: np.random.Generator) -> list[_Prim]:
    """A cut cube seen from above-front: a lit top face and two shaded side faces."""
    a, b = L / 2, W / 2 * prng.uniform(0.8, 1.1)
    d = 0.3 * L
    top = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]) + prng.normal(0, 0.03 * L, (4, 2))
    side = np.array([top[1], top[1] + [d * 0.4, d], top[2] + [d * 0.4, d], top[2]])
    front = np.array([top[2], top[2] + [d * 0.4, d], top[3] + [d * 0.4, d], top[3]])
    prims = [_Prim("poly", np.vstack([top[:2], side[1:3], front[2:3], top[3:]]), _shade(s, 0.8), body=True),
             _Prim("poly", side, _shade(s, 0.85), outline=_shade(s, 0.7)),
             _Prim("poly", front, _shade(c, 0.82), outline=_shade(s, 0.7)),
             _Prim("poly", top, c, outline=_shade(s, 0.85))]
    return prims + _texture(tex, L * 0.9, W * 0.9, c, s, prng)


def _piece_mineral(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                   prng: np.random.Generator) -> list[_Prim]:
    """An angular lump with facets of different brightness."""
    corners = int(prng.integers(6, 9))
    angles = (np.arange(corners) + prng.uniform(-0.3, 0.3, corners)) * 2 * np.pi / corners
    radii = prng.uniform(0.35, 0.5, angles.size)
    hull = np.stack([np.cos(angles) * radii * L, np.sin(angles) * radii * W], axis=1)
    apex = prng.normal(0, 0.08, 2) * np.array([L, W])
    prims = [_Prim("poly", hull, s, outline=_shade(s, 0.7), body=True)]
    for i in range(len(hull)):
        facet = np.array([apex, hull[i], hull[(i + 1) % len(hull)]])
        prims.append(_Prim("poly", facet, _shade(c, prng.uniform(0.82, 1.04))))
    if tex == "fibrous":  # parallel silky fibres along the lump
        for y in np.linspace(-0.18, 0.18, 6) * W:  # inside the ellipse every such hull contains
            span = 0.24 * L * np.sqrt(1 - (y / (0.24 * W)) ** 2)
            prims.append(_Prim("line", np.array([[-span, y], [span, y]]), _shade(s, 0.95)))
        return prims
    return prims + _texture(tex, L, W, c, s, prng)


def _piece_shell(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                 prng: np.random.Generator) -> list[_Prim]:
    body = _ellipse(L, W, prng, irr + 0.12, n=26)
    if prng.random() < 0.35:  # inner face up: smooth, pale and pearly
        prims = [_Prim("poly", body, s, outline=_shade(s, 0.6), body=True)]
        for k, tint in enumerate(((214, 222, 236), (232, 216, 226), (220, 234, 222))):
            prims.append(_Prim("line", _curve((-0.3 * L, (k - 1) * 0.15 * W), (0.3 * L, (k - 1) * 0.2 * W), 0.2),
                               _mix(s, tint, 0.7), max(1.0, W / 12)))
        return prims
    prims = [_Prim("poly", body, c, outline=_shade(c, 0.6), body=True)]
    if tex == "layered":  # growth layers as nested scaly outlines
        for k in (0.82, 0.64, 0.46):
            prims.append(_Prim("line", np.vstack([body * k, body[:1] * k]) + np.array([0.05 * L, 0.0]) * (1 - k),
                               _mix(c, s, 0.8)))
    elif tex == "porous":  # a row of respiratory holes near one edge
        xs = np.linspace(-0.3, 0.3, int(prng.integers(5, 8))) * L
        holes = np.stack([xs, -0.3 * W + 0.25 * W * (xs / L) ** 2], axis=1)
        prims.append(_Prim("dots", holes, _shade(c, 0.35), max(1.0, L / 40)))
        prims += _texture("rough", L, W, c, s, prng)
    return prims


def _piece_resin(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                 prng: np.random.Generator) -> list[_Prim]:
    """A translucent tear: dark rim, lighter glowing core, dusty surface."""
    body = _ellipse(L, W, prng, irr + 0.15, n=20)
    prims = [_Prim("poly", body, _shade(c, 0.75), outline=_shade(c, 0.55), body=True),
             _Prim("poly", body * 0.75, c), _Prim("poly", body * 0.4 + np.array([-0.05 * L, -0.05 * W]),
                                                  _mix(c, WHITE, 0.25))]
    return prims + _texture(tex, L, W, c, s, prng)


def _piece_gelatin(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                   prng: np.random.Generator) -> list[_Prim]:
    """A glossy block with translucent amber edges and a highlight band."""
    a, b = L / 2, W / 2
    block = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]) + prng.normal(0, 0.015 * L, (4, 2))
    prims = [_Prim("poly", block, c, outline=s, body=True),
             _Prim("line", np.array([block[0], block[1]]) + [0, 0.12 * W], _mix(c, s, 0.6), max(1.0, W * 0.08)),
             _Prim("poly", np.array([[-0.3 * a, -0.8 * b], [0.1 * a, -0.8 * b], [-0.1 * a, 0.8 * b],
                                     [-0.45 * a, 0.8 * b]]), _mix(c, WHITE, 0.22))]
    return prims


def _piece_hook_stem(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                     prng: np.random.Generator) -> list[_Prim]:
    """A stem segment with one or two hooks curving back from a node."""
    stem_w = max(1.5, W * 0.55)
    prims = [_Prim("line", np.array([[-L / 2, 0.0], [L / 2, 0.0]]), c, stem_w, body=True)]
    node = prng.uniform(-0.1, 0.2) * L
    sides = (-1, 1) if prng.random() < 0.7 else (int(prng.choice([-1, 1])),)
    for side in sides:
        a = np.linspace(0.0, 1.25 * np.pi, 9)
        radius = 0.22 * L
        hook = np.stack([node + radius * np.sin(a), side * radius * (1 - np.cos(a))], axis=1)
        prims.append(_Prim("line", hook[:6], c, max(1.0, stem_w * 0.8), body=True))
        prims.append(_Prim("line", hook[5:], _shade(c, 0.9), max(1.0, stem_w * 0.45), body=True))
    prims.append(_Prim("dots", np.array([[-L / 2, 0.0], [L / 2, 0.0]]), s, max(0.6, stem_w * 0.4)))
    return prims


def _piece_stamen(L: float, W: float, c: RGB, s: RGB, tex: str, curl: float, irr: float,
                  prng: np.random.Generator) -> list[_Prim]:
    """Loose bunched filaments, each with a small anther at its tip."""
    prims = []
    for _ in range(int(prng.integers(8, 14))):
        a = prng.normal(0, 0.5)
        end = (np.cos(a) * L * 0.5, np.sin(a) * L * 0.3)
        prims.append(_Prim("line", _curve((-L / 2, 0.0), end, prng.uniform(-0.2, 0.2)), c, 1.0, body=True))
        prims.append(_Prim("dots", np.array([end]), s, max(0.8, W * 0.3)))
    return prims


_PIECES: dict[str, Callable[..., list[_Prim]]] = {
    "berry": _piece_berry, "fruit": _piece_fruit, "seed": _piece_seed, "kernel": _piece_kernel,
    "root_slice": _piece_root_slice, "twig": _piece_twig, "root": _piece_root, "rhizome": _piece_rhizome,
    "bark": _piece_bark, "peel": _piece_peel, "leaf": _piece_leaf, "flower": _piece_flower,
    "fungus": _piece_fungus, "mineral": _piece_mineral, "shell": _piece_shell, "resin": _piece_resin,
    "gelatin": _piece_gelatin, "hook_stem": _piece_hook_stem, "stamen": _piece_stamen,
}
assert set(_PIECES) == set(FORMS)


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

    prims: list[_Prim]
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
        self.pieces: dict[int, list[_Prim]] = {}

    def piece(self, i: int) -> list[_Prim]:
        if i not in self.pieces:
            p = self.p
            L = self.length * self.size_var[i]
            W = max(1.5, L / (p["aspect"] * self.aspect_var[i]))
            shade = self.shade_var[i]
            self.pieces[i] = _PIECES[p["form"]](L, W, _shade(self.colour, shade), _shade(self.secondary, shade),
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


class HerbGenerator:
    domain = "tcm_herb"

    def cases(self, rng: np.random.Generator) -> list[SampleCase]:
        herbs = load_herbs()
        truths = np.arange(len(herbs) * YES_NO_PER_HERB) % 2 == 0
        truths = truths[rng.permutation(truths.size)].tolist()
        cases = []
        for index, herb in enumerate(herbs):
            own_truths = truths[index * YES_NO_PER_HERB:(index + 1) * YES_NO_PER_HERB]
            cases.append(SampleCase(
                key=herb["key"],
                title=f"{herb['pinyin']} ({herb['latin']})",
                text=monograph_text(herb),
                source=herb["source"],
                params=self._params(herb, rng),
                questions=herb_questions(herb, herbs, rng, own_truths),
                names={field: herb[field] for field in NAME_FIELDS},
                metadata={"category": herb["category"], "nature": herb["nature"], "flavours": herb["flavours"],
                          "channels": herb["channels"], "dosage": herb["dosage"]},
            ))
        return cases

    @staticmethod
    def _params(herb: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The herb's appearance plus what makes this batch its own: tint, piece size and outline."""
        appearance = dict(herb["appearance"])
        appearance.update({
            "tint": [int(v) for v in rng.integers(-8, 9, 3)],
            "size_scale": round(float(rng.uniform(0.9, 1.1)), 3),
            "irregularity": round(float(rng.uniform(0.04, 0.14)), 3),
            "count_scale": round(float(rng.uniform(0.8, 1.2)), 3),
            "batch_seed": int(rng.integers(2**31)),
        })
        return appearance

    def draw(self, case: SampleCase, rng: np.random.Generator) -> Image.Image:
        p = case.params
        canvas, mean_bg = _background(rng)
        placed = self._place(p, rng)

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

    @staticmethod
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


GENERATOR = HerbGenerator()
