"""What every domain of the sample corpus provides: cases (documents with facts) and a drawer.

Each domain module (`herbs`, `tongue`, `radiology`, `fundus`, `histology`) exposes a `GENERATOR`
implementing `DomainGenerator`. The builder (`build.py`) owns ids, image files, splits and QA ids;
the domain modules own the medicine: what a case says, what it looks like, what can be asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageFilter, ImageEnhance

IMAGE_SIZE = 224


@dataclass
class QuestionTemplate:
    """A closed question about one case.

    `uses_image=True` questions refer to "this image" and are asked with one of the case's
    held-out query images; the answer must follow from the case document (and the image), never
    from general knowledge alone. `options` is always given: ["yes", "no"] for yes/no questions.
    """

    question: str
    answer: str
    options: list[str]
    uses_image: bool
    kind: str  # "yes_no" or "multiple_choice"
    topic: str = ""  # what fact is asked, e.g. "channels"; used for reporting per question type


@dataclass
class SampleCase:
    key: str  # unique within the domain, used in ids and file names: [a-z0-9_]+
    title: str
    text: str
    source: str
    params: dict[str, Any]  # drawing parameters, JSON-serialisable; stored in metadata
    questions: list[QuestionTemplate]
    names: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


class DomainGenerator(Protocol):
    domain: str

    def cases(self, rng: np.random.Generator) -> list[SampleCase]:
        """All cases of the domain, deterministic given the rng."""

    def draw(self, case: SampleCase, rng: np.random.Generator) -> Image.Image:
        """One RGB IMAGE_SIZE×IMAGE_SIZE image of the case; the rng picks the variant
        (pose, scale, lighting, background, noise) so different rngs give different views."""


def photo_variant(img: Image.Image, rng: np.random.Generator, *, max_rotate: float = 25.0,
                  scale: tuple[float, float] = (0.85, 1.15), lighting: tuple[float, float] = (0.8, 1.2),
                  noise_sd: tuple[float, float] = (2.0, 8.0), blur: float = 0.6,
                  fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Shared acquisition variation: rotation, zoom, brightness/contrast, blur and sensor noise.

    Domain drawers render the subject (and their own background) and pass it through here, so
    variants differ the way repeated photographs or scans of one subject do.
    """
    size = img.size
    angle = float(rng.uniform(-max_rotate, max_rotate))
    zoom = float(rng.uniform(*scale))
    out = img.rotate(angle, resample=Image.BILINEAR, fillcolor=fill)
    w, h = int(size[0] * zoom), int(size[1] * zoom)
    out = out.resize((w, h), Image.BILINEAR)
    if zoom >= 1:
        left, top = (w - size[0]) // 2, (h - size[1]) // 2
        out = out.crop((left, top, left + size[0], top + size[1]))
    else:
        canvas = Image.new("RGB", size, fill)
        canvas.paste(out, ((size[0] - w) // 2, (size[1] - h) // 2))
        out = canvas
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(*lighting)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(*lighting)))
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, blur))))
    arr = np.asarray(out, dtype=np.float32)
    arr = arr + rng.normal(0, float(rng.uniform(*noise_sd)), size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------------------------
# Question helpers shared by the domain modules

def multiple_choice(rng: np.random.Generator, question: str, answer: str,
                    distractors: Sequence[str], *, uses_image: bool, topic: str) -> QuestionTemplate:
    """A four-option question: the answer and three distinct distractors, in random order."""
    pool = [d for d in dict.fromkeys(distractors) if d != answer]
    if len(pool) < 3:
        raise ValueError(f"need three distractors for {question!r}, got {pool}")
    options = [pool[i] for i in rng.choice(len(pool), size=3, replace=False)] + [answer]
    options = [options[i] for i in rng.permutation(4)]
    return QuestionTemplate(question, answer, options, uses_image, "multiple_choice", topic)


def yes_no(question: str, answer: bool, *, uses_image: bool, topic: str) -> QuestionTemplate:
    return QuestionTemplate(question, "yes" if answer else "no", ["yes", "no"], uses_image,
                            "yes_no", topic)


def presence_question(rng: np.random.Generator, template: str, present: Sequence[str],
                      absent: Sequence[str], *, topic: str, yes_share: float = 0.5) -> QuestionTemplate:
    """Ask about one finding in the image: a present one with probability `yes_share` (when the
    case has any), else an absent one. Domains where some cases show nothing raise `yes_share`
    for the others so that the domain's answers stay balanced."""
    want_yes = bool(present) and (not absent or bool(rng.random() < yes_share))
    pool = present if want_yes else absent
    name = pool[int(rng.integers(len(pool)))]
    return yes_no(template.format(name), want_yes, uses_image=True, topic=topic)


def grid_distractors(answer: float, low: float, high: float, step: float, min_gap: float,
                     fmt: str = "{:g}") -> list[str]:
    """Numeric distractors on the answer's own grid (so no option stands out by its format),
    at least `min_gap` away from the answer."""
    count = int(round((high - low) / step)) + 1
    values = (round(low + i * step, 6) for i in range(count))
    return [fmt.format(v) for v in values if abs(v - answer) >= min_gap - 1e-9]
