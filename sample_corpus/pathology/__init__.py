"""Pathology domain of the sample corpus: H&E histology patches with their pathology reports.

`specimens` writes each specimen's facts and report, `questions` asks about them; `tissues` paints
the specimen's tissue as a `scene` of stained primitives (built from the `cells`), which each view
renders rotated, zoomed and re-stained.
"""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from sample_corpus.acquisition import photo_variant
from sample_corpus.domain import IMAGE_SIZE, SampleCase
from sample_corpus.pathology.questions import specimen_questions
from sample_corpus.pathology.scene import MAX_SHIFT, MIN_ZOOM, render_densities, stain_colour
from sample_corpus.pathology.specimens import (CASE_COUNTS, DIAGNOSES, SOURCE, SOURCE_GRADING, new_specimen,
                                               specimen_handle, specimen_report, stain_params)
from sample_corpus.pathology.tissues import PAINTERS, tissue_scene


class PathologyGenerator:
    domain = "pathology"

    def cases(self, rng: np.random.Generator) -> list[SampleCase]:
        specimens: list[dict] = []
        handles: set[str] = set()
        for diagnosis, count in CASE_COUNTS.items():
            for i in range(count):
                while True:  # every specimen needs a history no other specimen shares
                    p = new_specimen(rng, diagnosis, i)
                    if specimen_handle(p) not in handles:
                        break
                handles.add(specimen_handle(p))
                p.update(stain_params(rng))
                p["key"] = f"{diagnosis}_{i + 1:02d}"
                specimens.append(p)
        vocabulary = {name: sorted({p[name] for p in specimens}) for name in ("site", "specimen", "follow_up")}
        cases = []
        for p in specimens:
            d = p["diagnosis"]
            title = f"{DIAGNOSES[d]}, {p['site']}" + (f" ({p['grade']})" if "grade" in p else "")
            cases.append(SampleCase(
                key=p["key"], title=title, text=specimen_report(p), source=SOURCE + SOURCE_GRADING.get(d, "."),
                params=p, questions=specimen_questions(rng, p, vocabulary),
                metadata={"diagnosis": DIAGNOSES[d], "site": p["site"], "age": p["age"], "sex": p["sex"]}))
        return cases

    def draw(self, case: SampleCase, rng: np.random.Generator) -> Image.Image:
        p = case.params
        sc = tissue_scene(json.dumps(p, sort_keys=True))
        angle = rng.uniform(0, 2 * np.pi)
        zoom = rng.uniform(MIN_ZOOM, 1.2)
        c, s = math.cos(angle) * zoom, math.sin(angle) * zoom
        matrix = np.array([[c, -s], [s, c]])
        offset = IMAGE_SIZE / 2 - matrix @ rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)
        densities = render_densities(sc, PAINTERS[p["diagnosis"]][0], matrix, offset)
        gain = np.asarray(p["stain_gain"]) * rng.uniform(0.88, 1.12, 3)
        img = stain_colour(densities, p, gain, rng)
        # rotation and zoom are already done, on the vectors; this adds lighting, focus and noise
        return photo_variant(img, rng, max_rotate=0.0, scale=(1.0, 1.0), lighting=(0.92, 1.08),
                             noise_sd=(1.5, 5.0), blur=0.8)


GENERATOR = PathologyGenerator()
