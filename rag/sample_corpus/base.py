"""What every domain of the sample corpus provides: cases (documents with facts) and a drawer.

Each domain module (`herbs`, `tongue`, `radiology`, `fundus`, `histology`) exposes a `GENERATOR`
implementing `DomainGenerator`. The builder (`build.py`) owns ids, image files, splits and QA ids;
the domain modules own the medicine: what a case says, what it looks like, what can be asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
