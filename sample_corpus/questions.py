"""Question helpers every domain of the sample corpus uses.

A domain states what to ask; these helpers decide how the options and the asked value are drawn,
so that answers are balanced and no option gives itself away by its wording or format. Each
helper draws from the rng in a fixed order: the corpus is reproducible from its seed only as long
as every domain asks its questions in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from sample_corpus.domain import QuestionTemplate

# Reports write the patient's sex as a word; specimens and patients store it as a code.
SEX_WORDS = {"M": "man", "F": "woman"}


def patient_handle(age: int, sex: str, history: str) -> str:
    """How a report introduces a patient, and how text-only questions name the case:
    "46-year-old woman with a dry cough". `sex` is a code of SEX_WORDS; `history` brings its own
    connective ("with ...", "who ..."), and must make the handle unique within the domain."""
    return f"{age}-year-old {SEX_WORDS[sex]} {history}"


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


def either_phrasing(rng: np.random.Generator, first: QuestionTemplate,
                    second: QuestionTemplate) -> QuestionTemplate:
    """One fact asked one of two ways ("malignant?" or "benign?") with equal chance, so that the
    wording of a yes/no question does not predict its answer."""
    return first if rng.random() < 0.5 else second


def value_question(rng: np.random.Generator, template: str, answer: str, values: Sequence[str], *,
                   uses_image: bool, topic: str) -> QuestionTemplate:
    """Yes/no "is the fact this value?": half the time the true `answer`, else another of `values`.
    `template` holds one `{}` for the value."""
    asked = answer if rng.random() < 0.5 else str(rng.choice([v for v in values if v != answer]))
    return yes_no(template.format(asked), asked == answer, uses_image=uses_image, topic=topic)


def side_question(rng: np.random.Generator, template: str, side: str, *, uses_image: bool,
                  topic: str) -> QuestionTemplate:
    """Yes/no about laterality: the side asked (`{}` in `template`) is right or left at random."""
    asked = str(rng.choice(["right", "left"]))
    return yes_no(template.format(asked), asked == side, uses_image=uses_image, topic=topic)


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


class Scale(NamedTuple):
    """The values a measurement can take in a domain: its range, grid step and written format;
    `min_gap` keeps distractors far enough from the answer to be clearly wrong."""

    low: float
    high: float
    step: float
    min_gap: float
    fmt: str = "{:g}"


def measurement_question(rng: np.random.Generator, question: str, value: float, scale: Scale, *,
                         uses_image: bool = False, topic: str = "measurement") -> QuestionTemplate:
    """A multiple-choice question about a measured value, written in the scale's format, with
    distractors from the same scale."""
    return multiple_choice(rng, question, scale.fmt.format(value), grid_distractors(value, *scale),
                           uses_image=uses_image, topic=topic)
