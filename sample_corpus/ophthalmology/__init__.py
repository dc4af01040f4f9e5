"""Ophthalmology domain of the sample corpus: colour fundus photographs with their reports.

`patients` creates each patient (retina, history, findings, follow-up), `reports` writes the
report, `questions` asks about it and `retina` draws the photographs.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sample_corpus.domain import SampleCase
from sample_corpus.ophthalmology.patients import CASE_COUNTS, DIAGNOSES, add_papilledema, new_patient, present_lesions
from sample_corpus.ophthalmology.questions import patient_questions
from sample_corpus.ophthalmology.reports import (SOURCE_DR, SOURCE_GLAUCOMA, SOURCE_PAPILLEDEMA, patient_report,
                                                 patient_title)
from sample_corpus.ophthalmology.retina import photograph


class OphthalmologyGenerator:
    domain = "ophthalmology"

    def cases(self, rng: np.random.Generator) -> list[SampleCase]:
        patients: list[dict] = []
        used: set[str] = set()
        frisen_grades = [int(g) for g in rng.choice(np.arange(1, 6), CASE_COUNTS["papilledema"], replace=False)]
        glaucoma_cdrs = [float(v) for v in rng.permutation([0.7, 0.75, 0.8, 0.85, 0.9])]
        for diagnosis, count in CASE_COUNTS.items():
            for i in range(count):
                p = new_patient(rng, diagnosis, i, used)
                if diagnosis == "glaucoma":
                    p["cdr"] = glaucoma_cdrs[i % len(glaucoma_cdrs)]
                elif diagnosis == "papilledema":
                    add_papilledema(rng, p, frisen_grades[i])
                p["key"] = f"{diagnosis}_{i + 1:02d}"
                patients.append(p)
        follow_ups = sorted({p["follow_up"] for p in patients})
        # Normal fundi show no lesion, so lesion questions about the others lean to "yes".
        yes_share = min(1.0, 0.5 * len(patients) / sum(bool(present_lesions(p)) for p in patients))
        cases = []
        for p in patients:
            source = {"glaucoma": SOURCE_GLAUCOMA, "papilledema": SOURCE_PAPILLEDEMA}.get(p["diagnosis"], SOURCE_DR)
            cases.append(SampleCase(
                key=p["key"], title=patient_title(p), text=patient_report(p, p["diagnosis"]), source=source,
                params=p, questions=patient_questions(rng, p, follow_ups, yes_share),
                metadata={"diagnosis": DIAGNOSES[p["diagnosis"]], "eye": p["eye"], "age": p["age"],
                          "sex": p["sex"]}))
        return cases

    def draw(self, case: SampleCase, rng: np.random.Generator) -> Image.Image:
        return photograph(case.params, rng)


GENERATOR = OphthalmologyGenerator()
