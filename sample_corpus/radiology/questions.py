"""Questions about a chest radiograph case: six every case gets, then those of its category."""

from __future__ import annotations

from typing import Any

import numpy as np

from sample_corpus.domain import QuestionTemplate
from sample_corpus.questions import (Scale, measurement_question, multiple_choice, side_question, value_question,
                                     yes_no)
from sample_corpus.radiology.reports import (ALL_FOLLOW_UPS, DIAGNOSES, EFFUSION_GRADES, FINDING_PHRASES, LOBES,
                                             Category)

SIDE_OPTIONS = ["right", "left", "bilateral", "none"]
CTR_SCALE = Scale(0.38, 0.75, 0.01, 0.05, "{:.2f}")
EFFUSION_HEIGHT_SCALE = Scale(1.0, 14.0, 0.5, 1.5, "{:.1f} cm")
RIM_SCALE = Scale(0.5, 5.0, 0.1, 0.5, "{:.1f} cm")
CTR_ABOVE_HALF = "Is the cardiothoracic ratio in this radiograph greater than 0.5?"


def radiology_questions(category: Category, facts: dict[str, Any],
                        rng: np.random.Generator) -> list[QuestionTemplate]:
    handle, diagnosis = facts["handle"], facts["diagnosis"]
    if category.key == "normal":
        present = yes_no("Is this chest radiograph within normal limits?", True, uses_image=True,
                         topic="diagnosis")
    else:
        present = yes_no(f"Is there {FINDING_PHRASES[diagnosis]} in this radiograph?", True, uses_image=True,
                         topic="diagnosis")
    absent = str(rng.choice([d for d in DIAGNOSES[1:] if d != diagnosis]))
    follow_up_check = value_question(rng, f"Did the report for {handle} recommend {{}}?", facts["follow_up"],
                                     ALL_FOLLOW_UPS, uses_image=False, topic="follow_up")
    qs = [
        multiple_choice(rng, "What is the main finding on this chest radiograph?", diagnosis, DIAGNOSES,
                        uses_image=True, topic="diagnosis"),
        present,
        yes_no(f"Is there {FINDING_PHRASES[absent]} in this radiograph?", False, uses_image=True,
               topic="diagnosis"),
        multiple_choice(rng, f"What was the radiological impression for {handle}?", diagnosis, DIAGNOSES,
                        uses_image=False, topic="diagnosis"),
        multiple_choice(rng, f"What follow-up did the radiologist recommend for {handle}?", facts["follow_up"],
                        ALL_FOLLOW_UPS, uses_image=False, topic="follow_up"),
        follow_up_check,
    ]
    return qs + _CATEGORY_QUESTIONS[category.key](facts, handle, rng)


def _normal(facts: dict[str, Any], handle: str, rng: np.random.Generator) -> list[QuestionTemplate]:
    return [
        yes_no(CTR_ABOVE_HALF, False, uses_image=True, topic="ctr"),
        yes_no("Are both costophrenic angles sharp in this radiograph?", True, uses_image=True,
               topic="costophrenic_angles"),
        measurement_question(rng, f"What cardiothoracic ratio was measured for {handle}?", facts["ctr"], CTR_SCALE,
                             topic="ctr"),
    ]


def _consolidation(facts: dict[str, Any], handle: str, rng: np.random.Generator) -> list[QuestionTemplate]:
    lobe = facts["lobe"]
    return [
        multiple_choice(rng, "Which lobe is consolidated in this radiograph?", lobe, LOBES,
                        uses_image=True, topic="lobe"),
        yes_no("Is the abnormality in this radiograph in the right lung?", lobe.startswith("right"),
               uses_image=True, topic="laterality"),
        multiple_choice(rng, f"Which lobe was consolidated in {handle}?", lobe, LOBES,
                        uses_image=False, topic="lobe"),
        yes_no(f"Were air bronchograms reported in {handle}?", facts["air_bronchograms"],
               uses_image=False, topic="air_bronchograms"),
    ]


def _cardiomegaly(facts: dict[str, Any], handle: str, rng: np.random.Generator) -> list[QuestionTemplate]:
    return [
        yes_no(CTR_ABOVE_HALF, True, uses_image=True, topic="ctr"),
        measurement_question(rng, "What is the cardiothoracic ratio on this radiograph?", facts["ctr"], CTR_SCALE,
                             uses_image=True, topic="ctr"),
        measurement_question(rng, f"What cardiothoracic ratio was measured for {handle}?", facts["ctr"], CTR_SCALE,
                             topic="ctr"),
        yes_no(f"Was upper lobe venous diversion reported for {handle}?", facts["upper_lobe_diversion"],
               uses_image=False, topic="associated_finding"),
    ]


def _effusion(facts: dict[str, Any], handle: str, rng: np.random.Generator) -> list[QuestionTemplate]:
    qs = _which_side(rng, "pleural effusion", "Is the {} costophrenic angle blunted in this radiograph?", facts["side"])
    height = float(facts["height"].split()[0])
    return qs + [
        multiple_choice(rng, f"How large was the pleural effusion of {handle}?", facts["grade"],
                        EFFUSION_GRADES, uses_image=False, topic="size"),
        measurement_question(rng, f"How high above the costophrenic angle did the effusion of {handle} reach?",
                             height, EFFUSION_HEIGHT_SCALE),
    ]


def _pneumothorax(facts: dict[str, Any], handle: str, rng: np.random.Generator) -> list[QuestionTemplate]:
    qs = _which_side(rng, "pneumothorax", "Is the pneumothorax in this radiograph on the {} side?", facts["side"])
    rim = float(facts["rim"].split()[0])
    return qs + [
        measurement_question(rng, f"What rim size was measured for the pneumothorax of {handle}?", rim, RIM_SCALE),
        yes_no(f"Was the pneumothorax of {handle} classified as large?", facts["large"],
               uses_image=False, topic="size"),
    ]


def _which_side(rng: np.random.Generator, finding: str, side_template: str, side: str) -> list[QuestionTemplate]:
    """The laterality of a one-sided finding in the image, asked as a choice and as a yes/no."""
    check = side_question(rng, side_template, side, uses_image=True, topic="laterality")
    return [multiple_choice(rng, f"On which side is the {finding} in this radiograph?", side, SIDE_OPTIONS,
                            uses_image=True, topic="laterality"),
            check]


_CATEGORY_QUESTIONS = {"normal": _normal, "consolidation": _consolidation, "cardiomegaly": _cardiomegaly,
                       "effusion": _effusion, "pneumothorax": _pneumothorax}
