"""Chest radiograph cases (domain `radiology`): synthetic PA films with structured reports.

`reports` writes the patients and their reports, `questions` asks about them, `film` draws the
films; the report's numbers are the ones the drawer uses, so the film and the report agree.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sample_corpus.domain import SampleCase
from sample_corpus.radiology.film import draw_film
from sample_corpus.radiology.questions import radiology_questions
from sample_corpus.radiology.reports import CATEGORIES, SOURCE, write_report


class RadiologyGenerator:
    domain = "radiology"

    def cases(self, rng: np.random.Generator) -> list[SampleCase]:
        used_ages: set[int] = set()
        cases = []
        for category in CATEGORIES:
            for index, complaint in enumerate(category.complaints):
                # Distinct ages make every patient handle unique within the domain.
                age = int(rng.integers(*category.ages))
                while age in used_ages:
                    age = int(rng.integers(*category.ages))
                used_ages.add(age)
                sex = "man" if rng.random() < 0.5 else "woman"
                report = write_report(category, index, age, sex, complaint, rng)
                cases.append(SampleCase(key=f"{category.key}_{index + 1}", title=report.title, text=report.text,
                                        source=SOURCE, params=report.params,
                                        questions=radiology_questions(category, report.facts, rng),
                                        metadata=report.facts))
        return cases

    def draw(self, case: SampleCase, rng: np.random.Generator) -> Image.Image:
        return draw_film(case.params, rng)


GENERATOR = RadiologyGenerator()
