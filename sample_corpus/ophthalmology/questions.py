"""Questions about a fundus photograph case: eight every patient gets, then those of their diagnosis."""

from __future__ import annotations

import numpy as np

from sample_corpus.domain import QuestionTemplate
from sample_corpus.ophthalmology.patients import DIAGNOSES, LESIONS, SNELLEN, present_lesions
from sample_corpus.questions import (Scale, either_phrasing, measurement_question, multiple_choice,
                                     presence_question, side_question, yes_no)

CUP_TO_DISC = Scale(0.2, 0.9, 0.05, 0.2)
IOP_MMHG = Scale(10, 36, 1, 3, "{:g} mmHg")
HBA1C_PERCENT = Scale(6.0, 11.0, 0.1, 0.5, "{:.1f}%")


def patient_questions(rng: np.random.Generator, p: dict, all_follow_ups: list[str], yes_share: float,
                      ) -> list[QuestionTemplate]:
    """Questions about one patient; `yes_share` balances the lesion question over the domain."""
    diagnosis, handle = p["diagnosis"], "the " + p["handle"]
    label = DIAGNOSES[diagnosis]
    others = [d for d in DIAGNOSES.values() if d != label]
    present = present_lesions(p)
    absent = [name for name in LESIONS if name not in present]
    img = "this fundus photograph"
    image_eye = side_question(rng, f"Is {img} of a {{}} eye?", p["eye"], uses_image=True, topic="laterality")
    text_eye = side_question(rng, f"Was the {{}} eye photographed for {handle}?", p["eye"], uses_image=False,
                             topic="laterality")
    qs = [
        multiple_choice(rng, f"Which diagnosis is reported for {img}?", label, others,
                        uses_image=True, topic="diagnosis"),
        image_eye,
        presence_question(rng, "Does " + img + " show {}?", present, absent, topic="lesion_presence",
                          yes_share=yes_share),
        multiple_choice(rng, f"What follow-up was recommended for the patient in {img}?", p["follow_up"],
                        all_follow_ups, uses_image=True, topic="follow_up"),
        multiple_choice(rng, f"What was recorded as the impression for {handle}?", label, others,
                        uses_image=False, topic="diagnosis"),
        text_eye,
        multiple_choice(rng, f"What visual acuity was recorded in the photographed eye of {handle}?",
                        p["va"], SNELLEN, uses_image=False, topic="visual_acuity"),
        multiple_choice(rng, f"What follow-up was recommended for {handle}?", p["follow_up"],
                        all_follow_ups, uses_image=False, topic="follow_up"),
    ]
    if diagnosis == "papilledema":
        return qs + _papilledema(rng, p, img, handle)
    return qs + _disc_and_diabetes(rng, p, img, handle)


def _papilledema(rng: np.random.Generator, p: dict, img: str, handle: str) -> list[QuestionTemplate]:
    grades = [f"Frisén grade {g}" for g in range(1, 6)]
    grade = multiple_choice(rng, f"What Frisén grade was given to the disc swelling in {img}?",
                            f"Frisén grade {p['frisen']}", grades, uses_image=True, topic="grade")
    pressures = [f"{s}/{d} mmHg" for s, d in zip(rng.integers(112, 150, 6), rng.integers(68, 95, 6))]
    return [grade,
            multiple_choice(rng, f"What blood pressure was recorded for {handle}?", f"{p['bp']} mmHg",
                            pressures, uses_image=False, topic="measurement"),
            yes_no(f"Was the disc swelling reported as bilateral for {handle}?", bool(p["bilateral"]),
                   uses_image=False, topic="laterality")]


def _disc_and_diabetes(rng: np.random.Generator, p: dict, img: str, handle: str) -> list[QuestionTemplate]:
    """The cup-to-disc ratio, one measurement, and disc haemorrhage (glaucoma) or macular oedema."""
    glaucoma = p["diagnosis"] == "glaucoma"
    qs = [measurement_question(rng, f"What vertical cup-to-disc ratio was reported for the optic disc in {img}?",
                               p["cdr"], CUP_TO_DISC, uses_image=True, topic="cdr")]
    if "hba1c" in p and not glaucoma:
        qs.append(measurement_question(rng, f"What HbA1c was recorded for {handle}?", p["hba1c"], HBA1C_PERCENT))
    else:
        qs.append(measurement_question(rng, f"What intraocular pressure was measured in {handle}?", p["iop"],
                                       IOP_MMHG))
    if glaucoma:
        qs.append(yes_no(f"Was a disc haemorrhage reported for {handle}?", bool(p["disc_haemorrhage"]),
                         uses_image=False, topic="lesion_presence"))
    else:
        qs.append(either_phrasing(
            rng, yes_no(f"Was diabetic macular oedema reported for {handle}?", p["dme"] != "absent",
                        uses_image=False, topic="dme"),
            yes_no(f"Was the macula reported free of diabetic macular oedema for {handle}?", p["dme"] == "absent",
                   uses_image=False, topic="dme")))
    return qs
