"""What every domain of the sample corpus provides: cases (documents with facts) and a drawer.

Each domain (`tcm_herb`, `tcm_tongue`, `radiology`, `ophthalmology`, `pathology`, a module or a
subpackage named by its key) exposes a `GENERATOR` implementing `DomainGenerator`. The builder
(`build.py`) owns ids, image files, splits and QA ids; the domains own the medicine: what a case
says, what it looks like, what can be asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

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
